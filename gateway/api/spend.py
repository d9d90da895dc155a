"""`/spend/logs`, `/global/spend`, `/global/spend/report`: usage and cost, master key only."""
from flask import Blueprint

from . import admin_schemas as schemas
from .admin_schemas import load_args
from .auth import master_only, service
from .streaming import json_response

bp = Blueprint("spend", __name__)


@bp.get("/spend/logs")
@master_only
def logs():
    filters = load_args(schemas.SpendLogs())
    page, page_size = filters.pop("page", None), filters.pop("page_size")
    return json_response(service().spend_reports.logs(filters, page, page_size))


@bp.get("/global/spend")
@master_only
def global_spend():
    return json_response(service().spend_reports.global_spend(load_args(schemas.SpendFilters())))


@bp.get("/global/spend/report")
@master_only
def report():
    args = load_args(schemas.SpendReport())
    return json_response(service().spend_reports.report(args["start_date"], args["end_date"], args["group_by"]))
