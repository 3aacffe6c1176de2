"""An HTTP listener on the collector's event loop (aiohttp), for the metrics endpoint and the HTTP door."""

from __future__ import annotations

import ssl

from aiohttp import web

from collector.config import parse_host_port


def server_ssl_context(certificate_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or later) with the given PEM certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate_file, key_file)
    return context


class WebListener:
    """Serves an aiohttp application on HOST:PORT, over TLS when given an SSL context. Lifecycle:
    `start()` binds (RuntimeError naming the setting when it cannot); `shutdown()` is idempotent and
    safe without start."""

    def __init__(
        self, app: web.Application, listen: str, setting: str, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host, self._requested_port = parse_host_port(listen, setting)
        self.ssl_context = ssl_context
        self.listen = listen
        self.setting = setting
        self.app = app
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        # Requests in flight are answered before shutdown closes the listener (the service drains
        # first), so what is left at cleanup is idle keep-alive connections: no long wait for them.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(
            runner, self.host, self._requested_port, reuse_port=False, ssl_context=self.ssl_context
        )
        try:
            await site.start()
        except OSError as error:
            raise RuntimeError(f"{self.setting}: cannot bind {self.listen}: {error}") from None
        self.port = int(runner.addresses[0][1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
