"""The fake Telegram's HTTP interface: the Bot API under /bot<TOKEN>/<method>, a control API under /_fake/.

Bot API requests are answered in Telegram's JSON format (`{"ok": true, "result": ...}` or
`{"ok": false, "error_code": N, "description": ...}` with HTTP status N), so python-telegram-bot's own HTTP
client and error handling run unchanged. Parameters are read from the query string, a form-encoded body
(what python-telegram-bot sends; objects such as reply_markup arrive as JSON strings) or a JSON body.

Control API (JSON), used by `FakeTelegramClient`:
    POST /_fake/messages          {"chat_id", "text" | "sticker" | "photo" | "voice", "first_name", ...}
    POST /_fake/edits             {"chat_id", "message_id", "text"}
    GET  /_fake/chats/{id}/bot-messages?after=M&timeout=S   the bot's messages after id M, waiting up to S s
    POST /_fake/rate-limits       {"method": "sendMessage", "chat_id": id | null, "count": K, "retry_after": N}
    GET  /_fake/state             pending updates, whether a bot polls, chats, calls per method, commands
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .world import BOT_USER, ApiError, World

STATE_FILE = "faketelegram-state.json"
MAX_POLL_TIMEOUT = 50.0  # Telegram caps long polling near this too


class Params:
    """The parameters of one Bot API call, with Telegram's error for each missing or malformed one."""

    def __init__(self, values: dict[str, Any]):
        self.values = values

    def raw(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def required(self, name: str) -> Any:
        value = self.values.get(name)
        if value is None or value == "":
            raise ApiError(400, f"Bad Request: {name} is empty")
        return value

    def integer(self, name: str, default: int | None = None, *, required: bool = False) -> int | None:
        value = self.required(name) if required else self.values.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ApiError(400, f"Bad Request: invalid {name} {value!r}: expected an integer") from None

    def number(self, name: str, default: float) -> float:
        value = self.values.get(name)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ApiError(400, f"Bad Request: invalid {name} {value!r}: expected a number") from None

    def json_value(self, name: str) -> Any:
        """An object parameter: form fields carry it as a JSON string, JSON bodies as the object itself."""
        value = self.values.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
        return value


async def read_params(request: Request) -> Params:
    values: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if body:
        if content_type == "application/json":
            try:
                decoded = json.loads(body)
            except json.JSONDecodeError:
                raise ApiError(400, "Bad Request: request body is not valid JSON") from None
            if not isinstance(decoded, dict):
                raise ApiError(400, "Bad Request: JSON body must be an object of parameters")
            values.update(decoded)
        elif content_type == "application/x-www-form-urlencoded":
            values.update(parse_qsl(body.decode(), keep_blank_values=True))
        else:
            raise ApiError(
                400, f"Bad Request: unsupported content type {content_type!r} (the fake takes form or JSON)"
            )
    return Params(values)


# ---- Bot API methods ---------------------------------------------------------------------------------


async def get_me(world: World, params: Params) -> Any:
    return BOT_USER


async def get_updates(world: World, params: Params) -> Any:
    allowed = params.json_value("allowed_updates")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)):
        raise ApiError(400, "Bad Request: allowed_updates must be an Array of String")
    limit = params.integer("limit", 100)
    if not 1 <= limit <= 100:
        limit = 100  # as Telegram: out-of-range limits fall back to the default
    timeout = min(max(params.number("timeout", 0.0), 0.0), MAX_POLL_TIMEOUT)
    return await world.get_updates(params.integer("offset"), limit, timeout, allowed)


async def send_message(world: World, params: Params) -> Any:
    chat_id = params.integer("chat_id", required=True)
    text = params.raw("text")
    if text is None or text == "":
        raise ApiError(400, "Bad Request: message text is empty")
    return await world.send_message(chat_id, str(text), params.raw("parse_mode") or None,
                                    params.json_value("reply_markup"))


async def send_chat_action(world: World, params: Params) -> Any:
    chat_id = params.integer("chat_id", required=True)
    if chat_id not in world.chats:
        raise ApiError(400, "Bad Request: chat not found")
    params.required("action")
    return True


async def set_my_commands(world: World, params: Params) -> Any:
    commands = params.json_value("commands")
    if not isinstance(commands, list) or not all(
        isinstance(c, dict) and c.get("command") and c.get("description") for c in commands
    ):
        raise ApiError(400, "Bad Request: commands must be an Array of BotCommand with command and description")
    world.commands = [{"command": c["command"], "description": c["description"]} for c in commands]
    return True


async def get_my_commands(world: World, params: Params) -> Any:
    return world.commands


async def delete_my_commands(world: World, params: Params) -> Any:
    world.commands = []
    return True


async def delete_webhook(world: World, params: Params) -> Any:
    if str(params.raw("drop_pending_updates", "")).lower() in ("true", "1"):
        world.updates.clear()
    return True


async def get_webhook_info(world: World, params: Params) -> Any:
    return {"url": "", "has_custom_certificate": False, "pending_update_count": len(world.updates)}


async def accept(world: World, params: Params) -> Any:
    return True


BOT_METHODS = {
    "getme": get_me,
    "getupdates": get_updates,
    "sendmessage": send_message,
    "sendchataction": send_chat_action,
    "setmycommands": set_my_commands,
    "getmycommands": get_my_commands,
    "deletemycommands": delete_my_commands,
    "deletewebhook": delete_webhook,
    "getwebhookinfo": get_webhook_info,
    "close": accept,
    "logout": accept,
}


async def bot_api(request: Request) -> JSONResponse:
    world: World = request.app.state.world
    # Telegram method names are case-insensitive.
    method = request.path_params["method"].lower()
    handler = BOT_METHODS.get(method)
    if handler is None:
        return JSONResponse(ApiError(404, "Not Found: method not found").payload(), status_code=404)
    world.count_call(request.path_params["method"])
    try:
        result = await handler(world, await read_params(request))
    except ApiError as error:
        return JSONResponse(error.payload(), status_code=error.error_code)
    return JSONResponse({"ok": True, "result": result})


# ---- control API -------------------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise ApiError(400, "control API: the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "control API: the body must be a JSON object")
    return body


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"control API: {name!r} must be an integer, got {value!r}")
    return value


def _content(body: dict[str, Any], chat_id: int, message_number: int) -> dict[str, Any]:
    """The message content a user sends: text, or a sticker/photo/voice with placeholder file ids."""
    file_id = f"fake-{chat_id}-{message_number}"
    if "text" in body:
        if not isinstance(body["text"], str):
            raise ApiError(400, "control API: 'text' must be a string")
        return {"text": body["text"]}
    kind = body.get("kind")
    if kind == "sticker":
        return {"sticker": {"file_id": file_id, "file_unique_id": file_id, "type": "regular", "width": 512,
                            "height": 512, "is_animated": False, "is_video": False, "emoji": "🥧"}}
    if kind == "photo":
        return {"photo": [{"file_id": file_id, "file_unique_id": file_id, "width": 320, "height": 240}]}
    if kind == "voice":
        return {"voice": {"file_id": file_id, "file_unique_id": file_id, "duration": 2,
                          "mime_type": "audio/ogg"}}
    raise ApiError(400, "control API: give 'text', or 'kind' one of sticker, photo, voice")


async def control_message(request: Request) -> JSONResponse:
    world: World = request.app.state.world
    body = await _json_body(request)
    chat_id = _int_field(body, "chat_id")
    user = {k: body[k] for k in ("first_name", "last_name", "username") if body.get(k) is not None}
    if "user_id" in body:
        user["id"] = _int_field(body, "user_id")
    chat = world.chats.get(chat_id)
    content = _content(body, chat_id, chat.next_message_id if chat else 1)
    update = await world.user_message(chat_id, content, user=user)
    return JSONResponse(update)


async def control_edit(request: Request) -> JSONResponse:
    world: World = request.app.state.world
    body = await _json_body(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise ApiError(400, "control API: 'text' must be a string")
    update = await world.user_edit(_int_field(body, "chat_id"), _int_field(body, "message_id"), text)
    return JSONResponse(update)


async def control_bot_messages(request: Request) -> JSONResponse:
    world: World = request.app.state.world
    try:
        chat_id = int(request.path_params["chat_id"])
        after = int(request.query_params.get("after", 0))
        timeout = min(float(request.query_params.get("timeout", 0)), MAX_POLL_TIMEOUT)
    except ValueError:
        raise ApiError(400, "control API: chat id and 'after' must be integers, 'timeout' a number") from None
    if timeout > 0:
        messages = await world.wait_bot_messages(chat_id, after, timeout)
    else:
        messages = world.bot_messages(chat_id, after)
    return JSONResponse({"messages": messages})


async def control_rate_limit(request: Request) -> JSONResponse:
    world: World = request.app.state.world
    body = await _json_body(request)
    chat_id = body.get("chat_id")
    if chat_id is not None:
        chat_id = _int_field(body, "chat_id")
    count = _int_field(body, "count")
    retry_after = _int_field(body, "retry_after")
    if count < 1 or retry_after < 1:
        raise ApiError(400, "control API: 'count' and 'retry_after' must be at least 1")
    world.limit_rate(str(body.get("method", "sendMessage")), chat_id, count, retry_after)
    return JSONResponse({"ok": True})


async def control_state(request: Request) -> JSONResponse:
    world: World = request.app.state.world
    return JSONResponse({
        "bot": BOT_USER,
        "pending_updates": len(world.updates),
        "bot_polling": world.bot_polling(),
        "chats": sorted(world.chats),
        "calls": world.calls,
        "commands": world.commands,
        "allowed_updates": sorted(world.allowed_updates),
    })


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "service": "fake-telegram-bot-api", "bot": BOT_USER["username"]})


def _control(handler):
    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return JSONResponse({"ok": False, "error": error.description}, status_code=error.error_code)

    return wrapped


def create_app(data_dir: Path | None = None) -> Starlette:
    """The fake Telegram as an ASGI app. With a data_dir, its state survives a restart of the server."""

    @asynccontextmanager
    async def lifespan(app: Starlette):
        world = World()
        state_file = data_dir / STATE_FILE if data_dir else None
        if state_file and state_file.exists():
            world.load(state_file)
        app.state.world = world
        yield
        if state_file:
            world.save(state_file)

    return Starlette(
        routes=[
            Route("/", health),
            Route("/healthz", health),
            Route("/bot{token}/{method}", bot_api, methods=["GET", "POST"]),
            Route("/_fake/messages", _control(control_message), methods=["POST"]),
            Route("/_fake/edits", _control(control_edit), methods=["POST"]),
            Route("/_fake/chats/{chat_id}/bot-messages", _control(control_bot_messages)),
            Route("/_fake/rate-limits", _control(control_rate_limit), methods=["POST"]),
            Route("/_fake/state", _control(control_state)),
        ],
        lifespan=lifespan,
    )
