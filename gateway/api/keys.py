"""`/key/*`: the peer's virtual key admin routes, master key only. Views validate, call KeyAdmin, render."""
from flask import Blueprint

from . import admin_schemas as schemas
from .admin_schemas import load_args, load_body
from .auth import master_only, service
from .streaming import json_response

bp = Blueprint("keys", __name__)


@bp.post("/key/generate")
@master_only
def generate():
    return json_response(service().admin.generate(load_body(schemas.GenerateKey())))


@bp.post("/key/update")
@master_only
def update():
    return json_response(service().admin.update(load_body(schemas.UpdateKey())))


@bp.post("/key/delete")
@master_only
def delete():
    return json_response(service().admin.delete(**load_body(schemas.DeleteKeys())))


@bp.get("/key/info")
@master_only
def info():
    return json_response(service().admin.info(load_args(schemas.KeyOnly())["key"]))


@bp.get("/key/list")
@master_only
def list_keys():
    return json_response(service().admin.list(**load_args(schemas.ListKeys())))


@bp.post("/key/regenerate")
@master_only
def regenerate():
    data = load_body(schemas.RegenerateKey())
    return json_response(service().admin.regenerate(data["key"], data))


@bp.post("/key/<path:key>/regenerate")
@master_only
def regenerate_at_path(key):
    return json_response(service().admin.regenerate(key, load_body(schemas.RegenerateKeyAtPath())))


@bp.post("/key/block")
@master_only
def block():
    return json_response(service().admin.block(load_body(schemas.KeyOnly())["key"]))


@bp.post("/key/unblock")
@master_only
def unblock():
    return json_response(service().admin.unblock(load_body(schemas.KeyOnly())["key"]))
