"""The Celery workers' settings for golioth-sync, found by `dagster_celery.app` on the PYTHONPATH:

    PYTHONPATH=deploy celery -A dagster_celery.app worker -Q dagster -P threads -c 1 -n lane-1@%h

The broker's URL is read from GOLIOTH_SYNC_CELERY_BROKER here, in the worker's memory: unlike
`dagster-celery worker start -y`, which writes it into a file under DAGSTER_HOME, nothing holds it
on disk. The rest is the run workers' own (golioth_assets.settings.CELERY_APP_CONFIG)."""

from golioth_assets.settings import CELERY_APP_CONFIG, celery_broker

broker_url = celery_broker()
result_backend = "rpc://"
globals().update(CELERY_APP_CONFIG)
