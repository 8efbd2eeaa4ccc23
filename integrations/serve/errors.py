"""Errors a client of `stc serve` can cause, each with the HTTP status it is answered with."""

from stc.errors import InputError


class RequestError(InputError):
    """A request the server cannot carry out as asked; `status` is its 4xx HTTP status."""

    status = 400


class BadRequest(RequestError):
    status = 400


class Unauthorized(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class NotFound(RequestError):
    status = 404


class Conflict(RequestError):
    """The request is well formed but the server's state refuses it (a budget, a name in use)."""

    status = 409
