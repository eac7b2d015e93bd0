"""Reading the images of a ``POST /predict``: a multipart body, read through a byte counter.

Why bad requests cannot hurt the server: a request body is counted as it arrives and refused past
``max_files x max_file_mb`` (:attr:`~flowerfast.serving.config.ServeConfig.max_request_bytes`; at
once when its Content-Length says so, as it arrives when it is chunked); parts larger than the
multipart parser's spool size go to temporary files, not memory; a file over ``max_file_mb`` is
refused by name. Every file is then opened with the pixel limit of
:func:`~flowerfast.data.imagefiles.open_image` (a decompression bomb is refused before decoding)
and a truncated or foreign file fails its decode (:func:`describe_upload_error` says why). Each
refusal is an :class:`~flowerfast.serving.errors.ApiError`, a 4xx with ``{"error": "..."}``.
"""

from flowerfast.data.imagefiles import describe_error
from flowerfast.serving.config import FILES_FIELD, ServeConfig, size_text
from flowerfast.serving.errors import ApiError


class RequestTooLarge(Exception):
    """The request body went past :attr:`ServeConfig.max_request_bytes` while it was read."""


def counted_receive(receive, limit: int):
    """``receive`` that raises :class:`RequestTooLarge` once the body passes ``limit`` bytes, so
    a request is never read further than that (chunked bodies have no Content-Length to check)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge()
        return message

    return wrapped


def check_request_headers(headers, config: ServeConfig) -> None:
    """Refuse what the headers already show, before a byte of the body is read: a body that is
    not multipart (415), or a Content-Length over the request limit (413)."""
    if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, f"send the images as multipart/form-data in the field '{FILES_FIELD}'")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > config.max_request_bytes:
        raise ApiError(
            413, f"the request is {size_text(int(declared))}, over this server's limit of {config.limits_text()}"
        )


async def read_form(request, config: ServeConfig):
    """The request's multipart form, read through :func:`counted_receive` with at most
    ``max_files`` parts: a body over the limit is a 413 as soon as it passes it, too many files a
    413, a body that is not valid multipart a 400. The caller closes the form (its spooled files)."""
    from fastapi import Request
    from starlette.formparsers import MultiPartException, MultiPartParser

    check_request_headers(request.headers, config)
    limited = Request(request.scope, receive=counted_receive(request.receive, config.max_request_bytes))
    parser = MultiPartParser(limited.headers, limited.stream(), max_files=config.max_files, max_fields=config.max_files)
    try:
        return await parser.parse()
    except RequestTooLarge:
        raise ApiError(413, f"the request is over this server's limit of {config.limits_text()}") from None
    except MultiPartException as exc:
        too_many = "Too many files" in str(exc)
        raise ApiError(
            413 if too_many else 400,
            f"at most {config.max_files} files per request"
            if too_many
            else f"the multipart body cannot be read: {exc}",
        ) from None


def image_uploads(form, config: ServeConfig) -> list:
    """The files of the form's ``files`` field, each within ``max_file_mb``: none is a 422 (other
    fields and plain values do not count), any file over the limit a 413 naming every such file."""
    from starlette.datastructures import UploadFile

    uploads = [v for v in form.getlist(FILES_FIELD) if isinstance(v, UploadFile)]
    if not uploads:
        raise ApiError(422, f"no image in the request: send one or more files in the multipart field '{FILES_FIELD}'")
    big = [u for u in uploads if (u.size or 0) > config.max_file_bytes]
    if big:
        raise ApiError(
            413,
            f"{big[0].filename or 'a file'} is {size_text(big[0].size)}, over the limit of "
            f"{config.max_file_mb:g} MB per file",
            files=[{"file": u.filename, "error": "over the size limit"} for u in big],
        )
    return uploads


def describe_upload_error(exc: BaseException) -> str:
    """Why an upload is not an image, in one line. Pillow names a file it cannot identify by its
    path, which an upload does not have (it would show a temporary file object's address)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image, or in a format Pillow cannot read"
    return describe_error(exc)
