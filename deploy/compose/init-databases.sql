-- The other databases on the compose PostgreSQL (POSTGRES_DB creates `dagster`): the platform's registry and feed
-- table, and MLflow's tracking store.
CREATE DATABASE recsys;
CREATE DATABASE mlflow;
