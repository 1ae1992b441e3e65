"""The extender's apiserver client: what it sends, and how it reads the apiserver's answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from kubernetes import client

from extender.apiserver import KubeBinder
from extender.bind import BindConflict, PodGone

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def run_against(handler: Handler, test: Callable[[KubeBinder], Awaitable[Any]]) -> Any:
    """Run ``test`` with a binder whose apiserver is ``handler`` on a local port."""

    async def main() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{port}"
        cfg.api_key = {"authorization": "Bearer t0ken"}
        binder = KubeBinder(cfg)
        try:
            return await test(binder)
        finally:
            await binder.session.close()
            await runner.cleanup()

    return asyncio.run(main())


def test_bind_posts_the_binding_with_its_annotations_and_credentials() -> None:
    seen: list[tuple[str, str, str, Any]] = []

    async def apiserver(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.append((request.method, request.path, request.headers["Authorization"], body))
        return web.json_response({"kind": "Status", "code": 201}, status=201)

    run_against(apiserver, lambda b: b.bind("ns", "p", "u1", "n1", {"fulcrum.io/x": "1"}))

    ((method, path, auth, body),) = seen
    assert (method, path, auth) == ("POST", "/api/v1/namespaces/ns/pods/p/binding", "Bearer t0ken")
    assert body["metadata"] == {
        "name": "p",
        "namespace": "ns",
        "uid": "u1",
        "annotations": {"fulcrum.io/x": "1"},
    }
    assert body["target"] == {"apiVersion": "v1", "kind": "Node", "name": "n1"}


@pytest.mark.parametrize(
    ("status", "body", "raised", "message"),
    [
        (404, b'{"message": "pods \\"p\\" not found"}', PodGone, None),
        (409, b'{"message": "already assigned"}', BindConflict, None),
        (500, b'{"message": "etcdserver: timeout"}', RuntimeError, "500: etcdserver: timeout"),
        (502, b"<html>bad gateway</html>", RuntimeError, "502: <html>bad gateway</html>"),
    ],
)
def test_apiserver_answers_map_to_what_the_bind_verb_reports(
    status: int, body: bytes, raised: type[Exception], message: str | None
) -> None:
    async def apiserver(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body)

    with pytest.raises(raised, match=message):
        run_against(apiserver, lambda b: b.bind("ns", "p", "u1", "n1", {}))


def test_current_reads_the_pods_uid_and_node() -> None:
    async def apiserver(request: web.Request) -> web.Response:
        assert request.path == "/api/v1/namespaces/ns/pods/p"
        return web.json_response({"metadata": {"uid": "u2"}, "spec": {"nodeName": "n3"}})

    assert run_against(apiserver, lambda b: b.current("ns", "p")) == ("u2", "n3")


def test_an_address_is_allocated_by_compare_and_swap_retrying_a_lost_race() -> None:
    pool = {
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "1"},
        "spec": {"cidr": "10.0.0.0/30"},
        "status": {"allocations": {}},
    }
    writes: list[str] = []

    async def apiserver(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(pool)
        sent = orjson.loads(await request.read())
        writes.append(sent["metadata"]["resourceVersion"])
        if len(writes) == 1:  # someone else wrote first
            pool["metadata"]["resourceVersion"] = "2"
            pool["status"]["allocations"] = {"10.0.0.1": "pod:other"}
            return web.json_response({"code": 409}, status=409)
        return web.json_response({**sent, "metadata": {**sent["metadata"], "resourceVersion": "3"}})

    me = {"metadata": {"namespace": "ns", "name": "me"}}
    ip = run_against(apiserver, lambda b: b.allocate_ip("ns", "web", "pod:me", None, me))

    assert ip == "10.0.0.2" and writes == ["1", "2"]
