"""A small synchronous client for the simulator's control API (/_sim).

Works the same whether the simulator runs in a thread of this process or in a
subprocess, so tests, benchmarks and the demo all drive it this way.
"""

from __future__ import annotations

from typing import Any

import httpx

from .faults import FaultConfig


class SimulatorControlError(RuntimeError):
    pass


class SimulatorControl:
    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url + "/_sim", timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None, params: dict | None = None) -> Any:
        response = self._client.request(method, path, json=json, params=params)
        if response.status_code != 200:
            raise SimulatorControlError(f"{method} /_sim{path}: {response.status_code} {response.text}")
        return response.json()

    # projects

    def health(self) -> dict:
        return self._call("GET", "/health")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def projects(self) -> list[dict]:
        return self._call("GET", "/projects")["list"]

    def add_project(
        self,
        project_id: str | None = None,
        api_key: str | None = None,
        *,
        devices: int = 0,
        seed: int = 0,
        organization_id: str = "sim-org",
        catalog: bool = True,
        faults: FaultConfig | dict | None = None,
    ) -> dict:
        """Create a seeded project; id and key are generated when not given. Returns its summary."""
        body: dict[str, Any] = {
            "projectId": project_id,
            "apiKey": api_key,
            "devices": devices,
            "seed": seed,
            "organizationId": organization_id,
            "catalog": catalog,
        }
        if faults is not None:
            body["faults"] = faults.to_dict() if isinstance(faults, FaultConfig) else faults
        return self._call("POST", "/projects", json=body)

    def project(self, project_id: str) -> dict:
        return self._call("GET", f"/projects/{project_id}")

    def remove_project(self, project_id: str) -> None:
        self._call("DELETE", f"/projects/{project_id}")

    def set_project_deleted(self, project_id: str, deleted: bool = True, mode: str = "unauthenticated") -> None:
        self._call("PUT", f"/projects/{project_id}/deleted", json={"deleted": deleted, "mode": mode})

    # faults and stats

    def faults(self, project_id: str | None = None) -> dict | None:
        return self._call("GET", f"/projects/{project_id}/faults" if project_id else "/faults")

    def set_faults(self, config: FaultConfig | dict | None = None, project_id: str | None = None, **kw: Any) -> dict:
        """Replace the fault config (simulator-wide, or one project's override). kw: FaultConfig fields."""
        body = config.to_dict() if isinstance(config, FaultConfig) else dict(config or {})
        body.update(kw)
        return self._call("PUT", f"/projects/{project_id}/faults" if project_id else "/faults", json=body)

    def clear_faults(self, project_id: str | None = None) -> None:
        if project_id:
            self._call("DELETE", f"/projects/{project_id}/faults")
        else:
            self._call("PUT", "/faults", json={})

    def stats(self, project_id: str | None = None) -> dict:
        return self._call("GET", "/stats", params={"projectId": project_id} if project_id else None)

    def reset_stats(self, project_id: str | None = None) -> None:
        self._call("POST", "/stats/reset", params={"projectId": project_id} if project_id else None)

    # console edits and device activity

    def console_create(self, project_id: str, **device: Any) -> dict:
        return self._call("POST", f"/projects/{project_id}/devices", json=device)["data"]

    def console_update(self, project_id: str, device_id: str, *, replace: bool = False, **fields: Any) -> dict:
        method = "PUT" if replace else "PATCH"
        return self._call(method, f"/projects/{project_id}/devices/{device_id}", json=fields)["data"]

    def console_delete(self, project_id: str, device_id: str) -> dict:
        return self._call("DELETE", f"/projects/{project_id}/devices/{device_id}")["data"]

    def device_activity(
        self,
        project_id: str,
        device_id: str,
        data: Any = None,
        *,
        path: str = "data",
        firmware_version: str | None = None,
    ) -> dict:
        body = {"data": data, "path": path, "firmwareVersion": firmware_version}
        return self._call("POST", f"/projects/{project_id}/devices/{device_id}/activity", json=body)

    def mutate(self, project_id: str, count: int, seed: int = 0) -> list[str]:
        return self._call("POST", f"/projects/{project_id}/mutate", json={"count": count, "seed": seed})["deviceIds"]

    # churn while a listing pages (simulator/churn.py)

    def set_churn(self, project_id: str, *steps: dict) -> dict:
        """Arm churn steps, e.g. {"page": 2, "deleteRead": 30, "createEnd": 30}; returns the report."""
        return self._call("PUT", f"/projects/{project_id}/churn", json={"steps": list(steps)})

    def churn(self, project_id: str) -> dict:
        """The armed steps, the listings seen since arming, and what each fired step did (device ids)."""
        return self._call("GET", f"/projects/{project_id}/churn")

    def clear_churn(self, project_id: str) -> None:
        self._call("DELETE", f"/projects/{project_id}/churn")

    # webhooks

    def set_webhook(
        self, project_id: str, url: str, headers: dict[str, str] | None = None, *, inject_metadata: bool = True
    ) -> None:
        body = {"url": url, "headers": headers or {}, "injectMetadata": inject_metadata}
        self._call("PUT", f"/projects/{project_id}/webhook", json=body)

    def clear_webhook(self, project_id: str) -> None:
        self._call("DELETE", f"/projects/{project_id}/webhook")

    def set_events(self, project_id: str, url: str, secret: str) -> None:
        self._call("PUT", f"/projects/{project_id}/events", json={"url": url, "secret": secret})

    def clear_events(self, project_id: str) -> None:
        self._call("DELETE", f"/projects/{project_id}/events")

    def webhook_stats(self) -> dict:
        return self._call("GET", "/webhooks")

    def flush_webhooks(self, timeout_s: float = 10.0) -> dict:
        return self._call("POST", "/webhooks/flush", json={"timeoutS": timeout_s})
