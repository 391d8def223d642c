"""`poolq`: the command line. Heavy imports happen inside commands.

`worker --gpu N` must set CUDA_VISIBLE_DEVICES before anything imports
torch, so nothing at module level here may import torch (or models.engine).
The client commands (batch, schedules) speak HTTP and import neither the app
nor torch.
"""

from __future__ import annotations

import click

from app.cli.batch import batch
from app.cli.keys import keys
from app.cli.schedules import schedules
from app.cli.serve import api, beat, demo_model, flower, maintenance, migrate, up, webhooks, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(("DEBUG", "INFO", "WARNING", "ERROR"), case_sensitive=False),
              default="INFO", show_default=True, envvar="POOLQ_LOG_LEVEL", help="Env POOLQ_LOG_LEVEL.")
@click.option("--log-format", type=click.Choice(("text", "json")), default="text", show_default=True,
              envvar="POOLQ_LOG_FORMAT",
              help="json: one JSON object per line, for log shippers (env POOLQ_LOG_FORMAT).")
def cli(log_level: str, log_format: str) -> None:
    """poolq: transformer pooling models (classify, NER, scoring) as a job service."""
    from app.logs import configure_logging

    configure_logging(log_level, log_format)


for command in (up, api, worker, webhooks, maintenance, beat, flower, migrate, demo_model, keys, batch, schedules):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="poolq")
