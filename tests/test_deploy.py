"""The deployment files against each other and against what their consumers accept: the image installs with the
Makefile's own script and serves the Definitions pyproject names; compose, Helm and the workspace agree on the code
server's port and name; compose gives the instance every variable deploy/production/dagster.yaml reads, secrets only
from its environment; the Helm values have the structure the official chart's values.schema.json declares (chart
1.13.27, the Dagster release pinned in pyproject) for every key set here."""

from __future__ import annotations

import json
import re
import tomllib

import yaml
from dagster._core.workspace.config_schema import process_workspace_config

from tests.helpers import REPO

DEPLOY = REPO / "deploy"

# The chart's values.schema.json, for the keys deploy/helm/values.yaml sets (types; "required" lists; enums). The
# user-deployment entries follow the dagster-user-deployments subchart's schema (UserDeployment: name, image and
# port required; env a list of EnvVar or a map; envSecrets a list of {name}; codeServerArgs a list of strings).
STR, INT, BOOL = "string", "integer", "boolean"
ENV_VAR = {"type": "object", "properties": {"name": STR, "value": STR}, "required": ["name"]}
NAMED = {"type": "object", "properties": {"name": STR}, "required": ["name"]}
RESOURCES = {"type": "object", "properties": {"requests": "object", "limits": "object"}}
IMAGE = {
    "type": "object",
    "properties": {"repository": STR, "tag": STR, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
    "required": ["repository", "pullPolicy"],
}
USER_DEPLOYMENT = {
    "type": "object",
    "properties": {
        "name": STR,
        "image": IMAGE,
        "codeServerArgs": {"type": "array", "items": STR},
        "dagsterApiGrpcArgs": {"type": "array", "items": STR},
        "port": INT,
        "includeConfigInLaunchedRuns": {"type": "object", "properties": {"enabled": BOOL}, "required": ["enabled"]},
        "env": {"type": "array", "items": ENV_VAR},
        "envSecrets": {"type": "array", "items": NAMED},
        "resources": RESOURCES,
    },
    "required": ["name", "image", "port"],
}
CHART = {
    "type": "object",
    "properties": {
        "global": {"type": "object", "properties": {"postgresqlSecretName": STR}},
        "postgresql": {
            "type": "object",
            "properties": {
                "enabled": BOOL,
                "postgresqlHost": STR,
                "postgresqlUsername": STR,
                "postgresqlDatabase": STR,
                "service": {"type": "object", "properties": {"port": INT}},
            },
        },
        "generatePostgresqlPasswordSecret": BOOL,
        "dagsterWebserver": {"type": "object", "properties": {"replicaCount": INT}},
        "dagster-user-deployments": {
            "type": "object",
            "properties": {"enabled": BOOL, "deployments": {"type": "array", "items": USER_DEPLOYMENT}},
        },
        "runLauncher": {
            "type": "object",
            "properties": {
                "type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"]},
                "config": {
                    "type": "object",
                    "properties": {
                        "k8sRunLauncher": {
                            "type": "object",
                            "properties": {
                                "loadInclusterConfig": BOOL,
                                "envSecrets": {"type": "array", "items": NAMED},
                                "runK8sConfig": {
                                    "type": "object",
                                    "properties": {
                                        "containerConfig": {"type": "object", "properties": {"resources": RESOURCES}}
                                    },
                                },
                            },
                        }
                    },
                },
            },
        },
        "dagsterDaemon": {
            "type": "object",
            "properties": {
                "enabled": BOOL,
                "runCoordinator": {
                    "type": "object",
                    "properties": {
                        "enabled": BOOL,
                        "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]},
                        "config": {
                            "type": "object",
                            "properties": {
                                "queuedRunCoordinator": {
                                    "type": "object",
                                    "properties": {
                                        "maxConcurrentRuns": INT,
                                        "tagConcurrencyLimits": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {"key": STR, "value": STR, "limit": INT},
                                                "required": ["key", "limit"],
                                            },
                                        },
                                    },
                                }
                            },
                        },
                    },
                },
                "runRetries": {"type": "object", "properties": {"enabled": BOOL, "maxRetries": INT}},
                "runMonitoring": {
                    "type": "object",
                    "properties": {
                        "enabled": BOOL,
                        "startTimeoutSeconds": INT,
                        "maxRuntimeSeconds": INT,
                        "pollIntervalSeconds": INT,
                    },
                },
            },
        },
        "telemetry": {"type": "object", "properties": {"enabled": BOOL}},
    },
}
PY_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}


def violations(value, schema, path: str = "") -> list[str]:
    """Where `value` breaks `schema` (the subset of JSON Schema above: type, properties, required, items, enum).
    A key the schema does not list is reported too: every key we set must be one we checked."""
    if isinstance(schema, str):
        schema = {"type": schema}
    if "enum" in schema:
        return [] if value in schema["enum"] else [f"{path}: {value!r} not in {schema['enum']}"]
    want = PY_TYPES[schema["type"]]
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        return [f"{path}: {type(value).__name__}, expected {schema['type']}"]
    out = []
    if want is dict and "properties" in schema:
        out += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k not in schema["properties"]:
                out.append(f"{path}.{k}: not a key this test checks against the chart's schema")
            else:
                out += violations(v, schema["properties"][k], f"{path}.{k}")
    if want is list and "items" in schema:
        for i, v in enumerate(value):
            out += violations(v, schema["items"], f"{path}[{i}]")
    return out


def load(path):
    return yaml.safe_load(path.read_text())


def test_helm_values_match_the_charts_schema_and_the_image():
    values = load(DEPLOY / "helm" / "values.yaml")
    assert violations(values, CHART) == []
    # The checker catches what it should: a wrong type, an unknown key, a missing required key, a bad enum.
    broken = json.loads(json.dumps(values))
    broken["dagster-user-deployments"]["deployments"][0]["port"] = "4000"
    broken["runLauncher"]["type"] = "K8sLauncher"
    del broken["dagster-user-deployments"]["deployments"][0]["image"]["pullPolicy"]
    broken["postgresql"]["postgresqlPort"] = 5432
    assert len(violations(broken, CHART)) == 4
    dep = values["dagster-user-deployments"]["deployments"][0]
    assert dep["port"] == 4000 and dep["codeServerArgs"][:2] == ["-m", "recsys_assets.definitions"]
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    # no secret values in the file: passwords and webhook URLs only through Kubernetes secrets
    env = {e["name"] for e in dep["env"]}
    assert not env & {
        "RECSYS_PG_PASSWORD",
        "DAGSTER_PG_PASSWORD",
        "RECSYS_INFO_WEBHOOK_URL",
        "RECSYS_ERROR_WEBHOOK_URL",
    }


def test_image_installs_with_the_makefiles_script_and_serves_the_pyprojects_definitions():
    dockerfile = (DEPLOY / "code-location.Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    runs = " ".join(re.findall(r"^RUN (.+(?:\n .+)*)", dockerfile, flags=re.M))
    assert "bash deploy/install.sh /opt/venv" in runs  # the one install script...
    stamp = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "bash deploy/install.sh $(VENV) test" in stamp  # ...that make install runs too
    assert "openjdk-17" in dockerfile and dockerfile.startswith("#") and "FROM python:3.11" in dockerfile
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, flags=re.M).group(1))
    dagster_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    assert entry[:3] == ["dagster", "code-server", "start"]
    assert entry[entry.index("-m") + 1] == dagster_cfg["module_name"]
    assert entry[entry.index("--location-name") + 1] == dagster_cfg["code_location_name"]
    assert entry[entry.index("-p") + 1] == "4000" and "EXPOSE 4000" in dockerfile


def test_compose_and_workspace_agree_with_the_instance_and_the_image(monkeypatch):
    compose = load(DEPLOY / "compose" / "docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "code", "webserver", "daemon"}
    workspace_path = "/opt/recsys/deploy/production/workspace.yaml"
    assert workspace_path in services["webserver"]["entrypoint"] and workspace_path in services["daemon"]["entrypoint"]
    env = services["daemon"]["environment"]
    assert env == services["webserver"]["environment"] == services["code"]["environment"]
    # every variable the production instance and workspace read, the compose environment sets
    needed = set(re.findall(r"\{env: (\w+)\}", (DEPLOY / "production" / "dagster.yaml").read_text()))
    needed |= set(re.findall(r"\{env: (\w+)\}", (DEPLOY / "production" / "workspace.yaml").read_text()))
    assert needed and needed <= set(env), needed - set(env)
    assert env["RECSYS_CODE_SERVER_HOST"] == "code" and env["RECSYS_CODE_SERVER_PORT"] == "4000"
    # secrets only from the environment of `docker compose`, never literal
    for k, v in env.items():
        if "PASSWORD" in k or "WEBHOOK" in k:
            assert str(v).startswith("${"), k
    assert "PGPASSWORD" in services["mlflow"]["environment"] and "@postgres:5432/mlflow" in str(services["mlflow"])
    databases = (DEPLOY / "compose" / "init-databases.sql").read_text()
    assert env["RECSYS_PG_DB"] in databases and "mlflow" in databases and env["DAGSTER_PG_DB"] == "dagster"
    # the workspace is one Dagster accepts: a grpc_server entry whose host and port come from the environment
    workspace = load(DEPLOY / "production" / "workspace.yaml")
    monkeypatch.setenv("RECSYS_CODE_SERVER_HOST", "code")
    monkeypatch.setenv("RECSYS_CODE_SERVER_PORT", "4000")
    processed = process_workspace_config(workspace)
    assert processed.success, processed.errors
    assert processed.value["load_from"][0]["grpc_server"]["port"] == 4000
    grpc = workspace["load_from"][0]["grpc_server"]
    assert grpc["host"] == {"env": "RECSYS_CODE_SERVER_HOST"} and grpc["location_name"] == "recsys_platform"


def test_the_mlflow_server_manifest_is_the_one_the_values_point_at():
    deployment, service = yaml.safe_load_all((DEPLOY / "helm" / "mlflow.yaml").read_text())
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["command"] + container["args"])
    assert args.startswith("mlflow server") and "--backend-store-uri=postgresql+psycopg2://" in args
    assert "--artifacts-destination=gs://" in args and "@" in args and ":" not in args.split("//")[1].split("@")[0]
    assert container["env"][0]["name"] == "PGPASSWORD" and "secretKeyRef" in container["env"][0]["valueFrom"]
    port = service["spec"]["ports"][0]["port"]
    values = load(DEPLOY / "helm" / "values.yaml")
    env = {e["name"]: e["value"] for e in values["dagster-user-deployments"]["deployments"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}.recsys.svc.cluster.local:{port}"
    image = values["dagster-user-deployments"]["deployments"][0]["image"]["repository"]
    assert container["image"].startswith(image + ":")  # the code's image: the MLflow version pyproject pins
