"""``nst serve``: style transfer as an HTTP service (FastAPI + uvicorn, the ``serve`` extra) over the job engine.

    settings    the command's options as a frozen ``Settings`` (standard library only: cli.py imports it)
    problems    errors as RFC 9457 problem documents
    uploads     the request body: its limit, the multipart form, images checked before decoding, the spec
    app         ``create_app(engine, settings)``: the /v1 API and the page
    command     ``run(args)``: ``nst serve`` itself
"""
