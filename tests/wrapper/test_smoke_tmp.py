import time
from tests.dagger.conftest import status_name
from tests.wrapper.conftest import sh, dump

def test_hello(wdriver):
    t = time.time()
    wf, job = wdriver.run(sh("echo hello; echo err >&2; exit 3"))
    print(time.time() - t, dump(job))
    print(wdriver.log(wf, "job"))
    assert status_name(job.status) == "failed"
