"""Alerts' definitions: the check-failure, run-failure and notification-delivery sensors."""

from dagster import Definitions

from recsys_assets.alerts.sensors import alert_sensors

defs = Definitions(sensors=alert_sensors)
