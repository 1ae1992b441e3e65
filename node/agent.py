"""The node agent's core: runs its plugins' hooks in order, each within its timeout.

The transports (``node.nri`` for container lifecycle, ``node.deviceplugin`` for the kubelet's
device allocation, the pod informer and the check loop in ``fulcrum.run.node_serve``) call
:class:`Agent`; the agent calls the plugins and never lets one of them stall the node:

- every hook call runs on a worker thread with the plugin's ``timeout``; an overrun or an
  exception is reported (log, ``fulcrum_node_hook_failures_total``, an Event on the pod) and the
  plugin's ``failure_policy`` decides: ``ignore`` goes on without its adjustment, ``fail``
  refuses the container;
- a plugin with a call still running after its timeout is *stuck*: its hooks are skipped (and
  reported) until that call returns, so a hung plugin holds one worker, not the node;
- container hooks share one budget (``budget``, below the runtime's NRI request timeout of 2 s):
  a plugin whose turn comes after the budget is spent is skipped and reported.

:class:`Refuse` from ``create_container`` is not a failure but a verdict: the container is
refused with the plugin's message, and the pod gets an Event naming it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from node.plugin import (
    Adjustment,
    AgentContext,
    CheckResult,
    ContainerView,
    DeviceSet,
    NodePlugin,
    PodView,
    Refuse,
    Severity,
    hooks_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
BUDGET = 1.5  # seconds for all plugins' create_container (containerd's NRI timeout is 2 s)


class HookFailed(Exception):
    """A plugin's hook raised or overran; the message names the plugin, the hook and why."""


@dataclass
class _Stuck:
    since: float
    hook: str


class Agent:
    """Calls ``plugins`` (in ``order``) for one node; ``context`` is what they may use."""

    def __init__(
        self,
        plugins: Iterable[NodePlugin],
        context: AgentContext,
        *,
        registry: CollectorRegistry | None = None,
        budget: float = BUDGET,
        workers: int = 8,
    ) -> None:
        self.plugins = sorted(plugins, key=lambda p: (p.order, p.name))
        self.context = context
        self.budget = budget
        self.hooks = {p.name: set(hooks_of(p)) for p in self.plugins}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fulcrum-node-hook")
        self._stuck: dict[str, _Stuck] = {}
        self._lock = threading.Lock()
        reg = registry if registry is not None else CollectorRegistry()
        self.hook_seconds = Histogram(
            "fulcrum_node_hook_seconds",
            "Time in one plugin hook call",
            ["plugin", "hook"],
            registry=reg,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.hook_failures = Counter(
            "fulcrum_node_hook_failures",
            "Plugin hook calls that raised, overran their timeout or were skipped while stuck",
            ["plugin", "hook", "reason"],
            registry=reg,
        )
        self.refusals = Counter(
            "fulcrum_node_refused_containers",
            "Containers a plugin refused",
            ["plugin"],
            registry=reg,
        )
        for plugin in self.plugins:
            plugin.configure(context)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def uses(self, hook: str) -> bool:
        """Whether any plugin overrides ``hook`` (the transports subscribe only to those)."""
        return any(hook in hooks for hooks in self.hooks.values())

    def _with(self, hook: str) -> list[NodePlugin]:
        return [p for p in self.plugins if hook in self.hooks[p.name]]

    # --- one call -----------------------------------------------------------------------------

    def call(
        self, plugin: NodePlugin, hook: str, fn: Callable[[], T], *, timeout: float | None = None
    ) -> T:
        """``fn()`` (a call of ``plugin``'s ``hook``) on a worker within the timeout.

        Raises :class:`HookFailed` on an exception, an overrun, or while the plugin is stuck;
        :class:`Refuse` passes through.
        """
        limit = plugin.timeout if timeout is None else min(timeout, plugin.timeout)
        with self._lock:
            stuck = self._stuck.get(plugin.name)
        if stuck is not None:
            self.hook_failures.labels(plugin.name, hook, "stuck").inc()
            raise HookFailed(
                f"plugin {plugin.name!r}: skipped {hook}; its {stuck.hook} has not returned for "
                f"{time.monotonic() - stuck.since:.1f} s"
            )
        started = time.monotonic()
        future: Future[T] = self._pool.submit(fn)
        try:
            result = future.result(timeout=max(limit, 0.001))
        except FutureTimeout:
            self.hook_failures.labels(plugin.name, hook, "timeout").inc()
            self._mark_stuck(plugin.name, hook, future)
            raise HookFailed(
                f"plugin {plugin.name!r}: {hook} did not return within {limit:g} s"
            ) from None
        except Refuse:
            raise
        except Exception as exc:
            self.hook_failures.labels(plugin.name, hook, "error").inc()
            raise HookFailed(
                f"plugin {plugin.name!r}: {hook} raised {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self.hook_seconds.labels(plugin.name, hook).observe(time.monotonic() - started)
        return result

    def _mark_stuck(self, name: str, hook: str, future: Future[Any]) -> None:
        with self._lock:
            self._stuck[name] = _Stuck(time.monotonic(), hook)

        def unstick(_: Future[Any]) -> None:
            with self._lock:
                self._stuck.pop(name, None)
            log.warning("plugin %r: its %s returned after its timeout", name, hook)

        future.add_done_callback(unstick)

    def _report(self, pod: PodView | None, reason: str, message: str) -> None:
        log.warning("%s: %s", reason, message)
        try:
            self.context.event(pod, reason, message, warning=True)
        except Exception as exc:  # an Event is best effort: never fail a hook for it
            log.warning("could not record the Event %s: %s", reason, exc)

    # --- container lifecycle ------------------------------------------------------------------

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment:
        """Every plugin's adjustment, merged in order; raises :class:`Refuse` to refuse."""
        merged = Adjustment()
        deadline = time.monotonic() + self.budget
        for plugin in self._with("create_container"):
            left = deadline - time.monotonic()
            where = f"{pod.key} container {container.name!r}"
            try:
                if left <= 0:
                    self.hook_failures.labels(plugin.name, "create_container", "budget").inc()
                    raise HookFailed(
                        f"plugin {plugin.name!r}: skipped create_container, the agent's "
                        f"{self.budget:g} s budget for {where} was spent"
                    )
                got = self.call(
                    plugin,
                    "create_container",
                    lambda p=plugin: p.create_container(pod, container),  # type: ignore[misc]
                    timeout=left,
                )
            except Refuse as verdict:
                self.refusals.labels(plugin.name).inc()
                message = f"{plugin.name}: {verdict}"
                self._report(pod, "FulcrumRefused", f"{where}: {message}")
                raise Refuse(message) from None
            except HookFailed as failed:
                if plugin.failure_policy == "fail":
                    self._report(pod, "FulcrumPluginFailed", f"{where}: {failed}; refused")
                    raise Refuse(f"{failed} (failure policy: fail)") from None
                self._report(pod, "FulcrumPluginFailed", f"{where}: {failed}; went on without it")
                continue
            if got:
                _merge(merged, got, plugin.name, where)
        return merged

    def notify(self, hook: str, *args: Any) -> None:
        """A lifecycle notification (``container_started``, ``container_stopped``,
        ``pod_removed``, ``pod_changed``) to each plugin that takes it; failures are reported."""
        for plugin in self._with(hook):
            method = getattr(plugin, hook)
            try:
                self.call(plugin, hook, lambda m=method: m(*args))  # type: ignore[misc]
            except (HookFailed, Refuse) as failed:
                pod = args[0] if args and isinstance(args[0], PodView) else None
                self._report(pod, "FulcrumPluginFailed", str(failed))

    # --- devices and checks -------------------------------------------------------------------

    def device_sets(self) -> list[tuple[NodePlugin, DeviceSet]]:
        sets = []
        for plugin in self._with("devices"):
            try:
                found = self.call(plugin, "devices", plugin.devices)
            except HookFailed as failed:
                self._report(None, "FulcrumPluginFailed", str(failed))
                continue
            if found is not None and found.ids:
                sets.append((plugin, found))
        return sets

    def checks(self) -> list[CheckResult]:
        """Every plugin's check results; a plugin whose check fails is itself an Error result."""
        results: list[CheckResult] = []
        for plugin in self._with("check"):
            try:
                results += list(
                    self.call(plugin, "check", lambda p=plugin: list(p.check(self.context)))  # type: ignore[misc]
                )
            except HookFailed as failed:
                results.append(CheckResult(f"plugin.{plugin.name}", Severity.ERROR, str(failed)))
        return results

    def node_labels(self) -> dict[str, str]:
        labels: dict[str, str] = {}
        for plugin in self._with("node_labels"):
            try:
                labels.update(self.call(plugin, "node_labels", plugin.node_labels))
            except HookFailed as failed:
                self._report(None, "FulcrumPluginFailed", str(failed))
        return labels


def _merge(into: Adjustment, got: Adjustment, plugin: str, where: str) -> None:
    for name, theirs, ours in (
        ("env", got.env, into.env),
        ("annotation", got.annotations, into.annotations),
    ):
        for key, value in theirs.items():
            if key in ours and ours[key] != value:
                log.info("%s: plugin %r overrides %s %s", where, plugin, name, key)
            ours[key] = value
    into.devices += [d for d in got.devices if d not in into.devices]
    into.cdi_devices += [d for d in got.cdi_devices if d not in into.cdi_devices]


def parse_options(pairs: Iterable[str]) -> dict[str, str]:
    """``["gpu.fake=4", "gpu.model=A100"]`` → ``{"gpu.fake": "4", "gpu.model": "A100"}``."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        name, dot, option = key.partition(".")
        if not (eq and dot and name and option):
            raise ValueError(
                f"--plugin-option {pair!r}: expected PLUGIN.KEY=VALUE, like gpu.model=A100"
            )
        options[f"{name.lower()}.{option}"] = value
    return options


def options_for(context: AgentContext, plugin: str) -> dict[str, str]:
    """The options given to ``plugin`` (``--plugin-option PLUGIN.KEY=VALUE``), by KEY."""
    prefix = plugin.lower() + "."
    return {k[len(prefix) :]: v for k, v in context.options.items() if k.startswith(prefix)}
