"""Status objects and the exception that carries them."""
from __future__ import annotations


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def _what(res) -> str:
    return f"{res.plural}.{res.group}" if res.group else res.plural


def not_found(res, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_what(res)} "{name}" not found',
                    {"name": name, "group": res.group, "kind": res.plural})


def already_exists(res, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_what(res)} "{name}" already exists',
                    {"name": name, "group": res.group, "kind": res.plural})


def conflict(res, name: str, message: str, causes: list | None = None) -> ApiError:
    details = {"name": name, "group": res.group, "kind": res.plural}
    if causes:
        details["causes"] = causes
    return ApiError(409, "Conflict", message, details)


def invalid(res, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """causes: (field, reason, message), e.g. ("spec.selector", "FieldValueRequired", "Required value")."""
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    text = "; ".join(f"{f}: {m}" for f, _, m in causes)
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}',
                    {"name": name, "group": res.group, "kind": res.kind,
                     "causes": [{"field": f, "reason": r, "message": m} for f, r, m in causes]})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)
