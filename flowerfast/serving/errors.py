"""Errors as JSON: every refusal, every framework error and every crash of a request is answered
``{"error": "one line for a person", ...details}`` with its status, never an HTML page or a
traceback, and the server goes on serving."""

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.imagefiles import describe_error


class ApiError(Exception):
    """A request the server refuses: its status, a message for a person, and optional details."""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_response(status: int, message: str, headers=None, **details):
    """The one shape of every error answer: ``{"error": message, **details}``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, **details}, status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> str:
    """FastAPI's list of validation problems as one line: ``top_k: Input should be ...``
    (the location without its ``query``/``body`` prefix, which means nothing to a person)."""
    problems = [
        "{}: {}".format(".".join(str(p) for p in e.get("loc", ())[1:]) or "request", e.get("msg", "")) for e in errors
    ]
    return "; ".join(problems) or "invalid request"


def install_error_handlers(app) -> None:
    """Answer every error of ``app`` as JSON: our refusals (:class:`ApiError`, a 401 with the
    ``WWW-Authenticate`` header HTTP asks for), bad parameters (422), starlette's own errors
    (404, 405, ...), and anything else as a 500 that says what went wrong in one line."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, headers=headers, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        return error_response(422, validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        message = str(exc) if isinstance(exc, FlowerfastError) else describe_error(exc)
        return error_response(500, f"the server could not compute this request: {message}")
