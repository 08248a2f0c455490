"""Every etcd key dagger uses, built in this one place.

    <prefix>workflows/<id>          WorkflowRecord JSON; written last at creation, so a
                                    workflow is visible only once all its keys are stored
    <prefix>specs/<id>/<job>        the job's definition (JobSpec + its neighbours + index)
    <prefix>jobs/<id>/<job>         JobRecord JSON: one small key per job, never one blob
    <prefix>queue/<id>              present while the run needs a scheduler (queued or running);
                                    schedulers watch this prefix only, not every state change
    <prefix>cancel/<id>             present once someone asked to cancel the run
    <prefix>claims/<id>             the scheduler that owns the run (bound to its lease)
    <prefix>schedulers/<scheduler>  a live scheduler replica (bound to its lease): its endpoint, pid,
                                    start time and metrics URL
    <prefix>reports/<id>/<job>/<attempt>  an attempt's end (Outcome JSON) that reached another replica
                                    than the run's owner, left for the owner (removed when the run ends)
    <prefix>by-time/<ms>/<id>       empty: every workflow by creation time (ms, 15 digits), so
                                    admins list the newest first, a page at a time
    <prefix>by-owner/<owner>/<ms>/<id>  empty: the same for one owner's workflows
    <prefix>uploads/<upload id>     'used' once a stored workflow names the upload, 'removed'
                                    once a refused submission removed it (whichever came first)
    <prefix>deleting/<id>           WorkflowRecord JSON of a workflow being deleted: its record moved
                                    here (out of every read and listing) until its files and keys are gone
    <prefix>to-archive/<id>         empty: written with the records of a run's end (every end), removed
                                    once its directory is archived (what --archive-finished works through)
    <prefix>upgrades/<name>         present once the records of earlier versions were upgraded so
"""

from __future__ import annotations

from dagger_svc.core.records import WorkflowId

DEFAULT_PREFIX = "/donut/"


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.workflows = self.prefix + "workflows/"
        self.cancels = self.prefix + "cancel/"
        self.queue = self.prefix + "queue/"
        self.claims = self.prefix + "claims/"
        self.schedulers = self.prefix + "schedulers/"
        self.archive_due = self.prefix + "to-archive/"
        self.all_reports = self.prefix + "reports/"

    def workflow(self, workflow_id: str) -> str:
        return f"{self.workflows}{workflow_id}"

    def specs(self, workflow_id: str) -> str:
        return f"{self.prefix}specs/{workflow_id}/"

    def spec(self, workflow_id: str, job: str) -> str:
        return f"{self.prefix}specs/{workflow_id}/{job}"

    def jobs(self, workflow_id: str) -> str:
        return f"{self.prefix}jobs/{workflow_id}/"

    def job(self, workflow_id: str, job: str) -> str:
        return f"{self.prefix}jobs/{workflow_id}/{job}"

    def queued(self, workflow_id: str) -> str:
        return f"{self.queue}{workflow_id}"

    def cancel(self, workflow_id: str) -> str:
        return f"{self.cancels}{workflow_id}"

    def claim(self, workflow_id: str) -> str:
        return f"{self.claims}{workflow_id}"

    def listing(self, owner: str | None) -> str:
        """The prefix under which the workflows of the owner (None: of everybody) are listed."""
        return f"{self.prefix}by-time/" if owner is None else f"{self.prefix}by-owner/{owner}/"

    def listed(self, owner: str | None, created_at: float, workflow_id: str) -> str:
        return f"{self.listing(owner)}{int(created_at * 1000):015d}/{workflow_id}"

    def deleting(self, workflow_id: str = "") -> str:
        """The mark of a workflow being deleted (without an id: the prefix of them all)."""
        return f"{self.prefix}deleting/{workflow_id}"

    def upload(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}"

    def to_archive(self, workflow_id: str) -> str:
        return f"{self.archive_due}{workflow_id}"

    def upgrade(self, name: str) -> str:
        return f"{self.prefix}upgrades/{name}"

    def reports(self, workflow_id: str) -> str:
        return f"{self.all_reports}{workflow_id}/"

    def report(self, workflow_id: str, job: str, attempt: int) -> str:
        return f"{self.all_reports}{workflow_id}/{job}/{attempt}"

    def scheduler(self, scheduler_id: str) -> str:
        return f"{self.schedulers}{scheduler_id}"

    @staticmethod
    def workflow_id(key: str) -> WorkflowId:
        """The workflow id that ends a key (of a workflow, a queued run, a cancel, a claim)."""
        return WorkflowId(key.rsplit("/", 1)[1])
