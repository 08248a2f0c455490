"""A job's page with its live log, a workflow's results, and the API tokens page."""

from __future__ import annotations

from flask import Blueprint

blueprint = Blueprint("jobs", __name__)
