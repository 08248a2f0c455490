from donut_cli.cli import main

main()
