# The code-location image: the platform's Definitions served over gRPC, and what its run workers execute (the
# webserver and daemon of deploy/compose use it too; on Kubernetes they run the official Dagster images).
#   docker build -f deploy/code-location.Dockerfile -t recsys-code:$(git rev-parse --short HEAD) .
# Python 3.11 and Java 17 (PySpark's local mode, and the driver of a spark-submit run); the package installed by
# deploy/install.sh, the script `make install` runs (one install); the Spark class archive built by it.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    PATH=/opt/venv/bin:$PATH
WORKDIR /opt/recsys
COPY pyproject.toml README.md ./
COPY deploy ./deploy
COPY recsys_assets ./recsys_assets
COPY resources ./resources
COPY checks ./checks
RUN PYTHON=python3.11 bash deploy/install.sh /opt/venv \
 && mkdir -p "$DAGSTER_HOME" && cp deploy/production/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

EXPOSE 4000
# The gRPC code server (what the workspace's grpc_server entry, compose and the Helm chart's user deployment
# reach); the run launcher starts run workers from this same image.
ENTRYPOINT ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "recsys_assets.definitions", "--location-name", "recsys_platform"]
