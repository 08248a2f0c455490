"""The `donut` command group and what every command shares: settings, the client, errors.

Every command talks to the stack over gRPC; heavy imports happen inside the commands so
`donut --help` and friends start quickly. Errors are one line on stderr, never a traceback:
exit 2 for bad input, 1 for everything else that went wrong. The commands live in the
modules imported at the bottom: up, workflows, logs, results, accounts.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from donut.dagger.v1 import dagger_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from donut.dagger.v1 import dagger_pb2_grpc
    from donut.users.v1 import users_pb2_grpc
    from streamed_job.cellar import CellarClient

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
MIN_ID_PREFIX = 4  # characters of a workflow id that may stand for it
MAX_CANDIDATES = 10  # workflows named when an id prefix fits several
INT32_MAX = 2**31 - 1  # every number option has a maximum: protobuf refuses larger ones with a traceback
INT64_MAX = 2**63 - 1
MAX_SECONDS = 10.0**9  # (about 32 years: beyond, timers overflow)
ACTIVE = frozenset({pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING})


def status_name(value: pb.WorkflowStatus.ValueType) -> str:
    """`running` for WORKFLOW_STATUS_RUNNING..."""
    return pb.WorkflowStatus.Name(value).removeprefix("WORKFLOW_STATUS_").lower()


def job_status_name(value: pb.JobStatus.ValueType) -> str:
    """`succeeded` for JOB_STATUS_SUCCEEDED..."""
    return pb.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


STATUS_NAMES = tuple(status_name(value) for value in pb.WorkflowStatus.values() if value)
JOB_STATUS_NAMES = tuple(job_status_name(value) for value in pb.JobStatus.values() if value)


class Seconds(click.FloatRange):
    """Seconds from 0 (excluded when min_open) to MAX_SECONDS; never nan."""

    name = "seconds"

    def __init__(self, min_open: bool = False) -> None:
        super().__init__(0, MAX_SECONDS, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return seconds


class Failure(click.ClickException):
    """A one-line error with its exit code."""
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise Failure(message, code)


# ---- talking to the stack -------------------------------------------------------------


class Client:
    """Stubs over one channel, with the token on every call. With follow_config, a
    connection that was lost may be taken up at the endpoint the client config names now
    (`donut up --port 0` started again writes a new one): see moved()."""
    def __init__(self, endpoint: str, token: str, tls_ca: str = "", follow_config: bool = False,
                 token_from_config: bool = False) -> None:
        self.follow_config, self.token_from_config = follow_config, token_from_config
        self._connect(endpoint, token, tls_ca)

    def _connect(self, endpoint: str, token: str, tls_ca: str) -> None:
        from donut_common.rpc import channel

        self.endpoint, self.token, self.tls_ca = endpoint, token, tls_ca
        ca = None
        if tls_ca:
            try:
                ca = Path(tls_ca).read_bytes()
            except OSError as e:
                fail(f"--tls-ca: cannot read {tls_ca}: {e.strerror}", EXIT_BAD_INPUT)
            if b"-----BEGIN CERTIFICATE-----" not in ca:
                fail(f"--tls-ca: {tls_ca} holds no PEM certificate", EXIT_BAD_INPUT)
        try:
            self.channel = channel(endpoint, tls_ca=ca)
        except ValueError as e:  # a replica's host that does not resolve
            fail(f"cannot reach donut at {endpoint} ({e})")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    @functools.cached_property
    def users(self) -> users_pb2_grpc.UsersStub:
        from donut.users.v1 import users_pb2_grpc

        return users_pb2_grpc.UsersStub(self.channel)

    @functools.cached_property
    def dagger(self) -> dagger_pb2_grpc.DaggerStub:
        from donut.dagger.v1 import dagger_pb2_grpc

        return dagger_pb2_grpc.DaggerStub(self.channel)

    @functools.cached_property
    def cellar(self) -> CellarClient:
        from streamed_job.cellar import CellarClient

        return CellarClient(self.channel, self.metadata)

    def moved(self) -> bool:
        """After a lost connection: True when the client config now names another endpoint
        (the stack was started again elsewhere), which this client then uses."""
        from donut_common.config import ClientConfig

        if not self.follow_config:
            return False
        try:
            config = ClientConfig.load(tls_ca=self.tls_ca or None)
        except ValueError:
            return False
        if config.endpoint == self.endpoint:
            return False
        for stub in ("users", "dagger", "cellar"):  # (the old channel is left open: other threads may be on it)
            self.__dict__.pop(stub, None)
        self._connect(config.endpoint, config.token if self.token_from_config else self.token, self.tls_ca)
        click.echo(f"[donut] the client config names {config.endpoint} now: following there", err=True)
        return True


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turns gRPC errors into one-line messages and exit codes."""
    import grpc

    try:
        yield
    except grpc.RpcError as e:
        code = e.code()
        settings = click.get_current_context().find_object(Settings)
        endpoint = settings.endpoint if settings is not None else "?"
        if code == grpc.StatusCode.UNAVAILABLE:
            if (e.details() or "").startswith("etcd unavailable"):
                fail(f"donut at {endpoint} answers, but its {e.details()}")
            fail(f"cannot reach donut at {endpoint} ({e.details()})")
        if code == grpc.StatusCode.UNAUTHENTICATED and settings is not None and not settings.token:
            fail(settings.no_token())
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            for line in (e.details() or "").splitlines():
                click.echo(f"error: {line}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        fail(f"{e.details()} ({code.name.lower()})")
    except BrokenPipeError:  # the reader went away (`donut list | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
    except OSError as e:  # a local file or directory
        fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt:
        sys.exit(130)


def rpc_errors(command: F) -> F:
    """The command with its gRPC errors turned into one-line messages and exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with translated_errors():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Settings:
    def __init__(self, endpoint: str | None, token: str | None, tls_ca: str | None) -> None:
        from donut_common.config import ClientConfig

        self.problem = ""  # a client config that cannot be used: said when a command needs it
        try:
            config = ClientConfig.load(endpoint, token, tls_ca)
        except ValueError as e:
            config, self.problem = ClientConfig(), str(e)
        self.endpoint, self.token, self.tls_ca = config.endpoint, config.token, config.tls_ca
        self.token_source = "--token/DONUT_TOKEN" if token else "the token of the client config"
        self.endpoint_given, self.token_given = bool(endpoint), bool(token)
        self._client: Client | None = None

    @staticmethod
    def no_token() -> str:
        from donut_common.config import client_config_path

        path = client_config_path()
        where = f"{path} has none" if path.exists() else f"{path} is missing"
        return f"no token: {where} (`donut up` writes it), and neither --token nor DONUT_TOKEN gives one"

    @property
    def client(self) -> Client:
        if self.problem:
            fail(self.problem)
        if trouble := token_trouble(self.token):
            fail(f"{self.token_source}: {trouble}", EXIT_BAD_INPUT)
        if self._client is None:
            self._client = Client(self.endpoint, self.token, self.tls_ca, follow_config=not self.endpoint_given,
                                  token_from_config=not self.token_given)
        return self._client


pass_settings = click.make_pass_decorator(Settings)

MAX_TOKEN_CHARS = 4096  # gRPC refuses metadata much beyond 8 KiB, with C-core lines on stderr


def token_trouble(token: str) -> str | None:
    """What would keep the token from being sent as gRPC metadata, if anything."""
    if len(token) > MAX_TOKEN_CHARS:
        return f"too long to be a token ({len(token)} characters)"
    if any(not "!" <= c <= "~" for c in token):
        return "a token is printable ASCII, without spaces or line breaks"
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "DONUT"})
@click.option("--endpoint", envvar="DONUT_ENDPOINT", help="host:port of the donut server [default: from "
              "$DONUT_HOME/client.json, $DONUT_HOME being ~/.donut unless set]")
@click.option("--token", envvar="DONUT_TOKEN", help="API token [default: from $DONUT_HOME/client.json]")
@click.option("--tls-ca", envvar="DONUT_TLS_CA", help="CA certificate (PEM) to reach a TLS server")
@click.version_option(package_name="donut-dagger", prog_name="donut", message="%(prog)s %(version)s (client)",
                      allow_from_autoenv=False)
@click.pass_context
def cli(ctx: click.Context, endpoint: str | None, token: str | None, tls_ca: str | None) -> None:
    """donut-dagger: DAGs of batch jobs, with live logs and saved results."""
    ctx.obj = Settings(endpoint, token, tls_ca)


def iso_time(ts: Timestamp) -> str | None:
    from streamed_job.timestamps import seconds

    at = seconds(ts)
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


class WorkflowIdType(click.ParamType[str]):
    """A workflow id as the user gives it, turned into the full id before a command runs:
    the id, a unique start of it (MIN_ID_PREFIX characters or more), or `@latest` (the
    caller's newest workflow)."""

    name = "WORKFLOW_ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from donut_common import names

        text = str(value)
        if names.matches(names.WORKFLOW_ID, text):
            return text
        label = param.human_readable_name if param is not None else self.name
        if text != "@latest" and not re.fullmatch(r"[0-9a-fA-F-]{1,36}", text):
            shown = text if len(text) <= 40 else text[:40] + "..."
            fail(f"{label}: not a workflow id, the start of one, or @latest: {shown!r}", EXIT_BAD_INPUT)
        settings = ctx.find_object(Settings) if ctx is not None else None
        if settings is None:
            return text
        if text == "@latest":
            return self._latest(settings)
        if len(text) < MIN_ID_PREFIX:
            fail(f"{label}: give at least {MIN_ID_PREFIX} characters of a workflow id (or @latest), "
                 f"not {text!r}", EXIT_BAD_INPUT)
        return self._by_prefix(settings, text.lower())

    @staticmethod
    def _latest(settings: Settings) -> str:
        client = settings.client
        with translated_errors():
            page = client.dagger.ListWorkflows(pb.ListWorkflowsRequest(page_size=1, mine=True),
                                               metadata=client.metadata)
        if not page.workflows:
            fail("@latest: you have no workflows yet")
        return page.workflows[0].id

    @staticmethod
    def _by_prefix(settings: Settings, prefix: str) -> str:
        client = settings.client
        with translated_errors():
            found = client.dagger.ListWorkflows(pb.ListWorkflowsRequest(id_prefix=prefix, page_size=MAX_CANDIDATES + 1),
                                                metadata=client.metadata).workflows
        if not found:
            fail(f"no workflow {prefix}... (not_found)")
        if len(found) > 1:
            more = ", ..." if len(found) > MAX_CANDIDATES else ""
            fail(f"ambiguous id prefix {prefix!r}: {', '.join(w.id for w in found[:MAX_CANDIDATES])}{more}",
                 EXIT_BAD_INPUT)
        return found[0].id


WORKFLOW_ID = WorkflowIdType()


class LabelType(click.ParamType[tuple[str, str]]):
    """A label as KEY=VALUE, checked as the server checks it."""

    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        from dagger_svc.core.limits import label_problems

        if isinstance(value, tuple):
            return value
        key, equals, label = str(value).partition("=")
        if not equals:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        for problem in label_problems({key: label}):
            self.fail(f"{problem.place}: {problem.message}", param, ctx)
        return key, label


LABEL = LabelType()


class DurationType(click.ParamType[timedelta]):
    """A span of time as people write it: 90 (seconds), 45s, 10m, 2h, 1d; one longer than a
    timedelta holds is the longest it holds."""

    name = "DURATION"
    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    LONGEST = timedelta.max.days * 86400

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip()
        number, unit = (text[:-1], text[-1]) if text[-1:] in self.UNITS else (text, "s")
        if not number.isdigit():
            self.fail(f"expected a duration like 90, 45s, 10m, 2h or 1d, not {value!r}", param, ctx)
        return timedelta(seconds=min(int(number) * self.UNITS[unit], self.LONGEST))


DURATION = DurationType()


def main() -> None:
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # the C core's own log lines (read when grpc is imported)
    code = _exit_code(_run)
    sys.stdout.flush()
    sys.stderr.flush()
    if _quick_exit:  # tearing gRPC down at exit took 100-150 ms after the answer was printed
        os._exit(code)
    sys.exit(code)


_quick_exit = True


def keep_the_normal_exit() -> None:
    """For a command whose own shutdown must run to the end (`up`)."""
    global _quick_exit
    _quick_exit = False


def _exit_code(run: Callable[[], int]) -> int:
    try:
        return run()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        click.echo(e.code, err=True)
        return EXIT_FAILED


def _run() -> int:
    try:
        code = cli.main(prog_name="donut", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()
        return EXIT_BAD_INPUT
    except click.UsageError as e:  # one line, as every other error (click's own shows the usage too)
        click.echo(f"error: {e.format_message()}", err=True)
        return EXIT_BAD_INPUT
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return EXIT_FAILED
    return code if isinstance(code, int) else 0


def _show_envvars(command: click.Command) -> None:
    """Every option's help names the variable it also reads (DONUT_<COMMAND>_<OPTION> and the like)."""
    for param in command.params:
        if isinstance(param, click.Option) and (param.envvar or param.allow_from_autoenv) and not param.is_eager:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_envvars(sub)


# the commands register themselves on the group
from donut_cli import (  # noqa: E402,F401
    accounts,
    archive,
    cluster,
    deleting,
    lifecycle,
    lint,
    logs,
    misc,
    results,
    ui,
    up,
    workflows,
)

_show_envvars(cli)

if __name__ == "__main__":
    main()
