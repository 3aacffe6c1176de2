"""An HTTP listener on the collector's event loop (aiohttp), for the metrics endpoint and the HTTP door."""

from __future__ import annotations

from aiohttp import web

from collector.config import parse_host_port


class WebListener:
    """Serves an aiohttp application on HOST:PORT. Lifecycle: `start()` binds (RuntimeError naming the
    setting when it cannot); `shutdown()` is idempotent and safe without start."""

    def __init__(self, app: web.Application, listen: str, setting: str) -> None:
        self.host, self._requested_port = parse_host_port(listen, setting)
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
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_port=False)
        try:
            await site.start()
        except OSError as error:
            raise RuntimeError(f"{self.setting}: cannot bind {self.listen}: {error}") from None
        self.port = int(runner.addresses[0][1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
