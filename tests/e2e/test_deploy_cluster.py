"""docker-compose.cluster.yml and its ClickHouse, Keeper and Envoy files, checked without docker: the
services, the cluster's topology, the macros the replicated tables' paths use, the Keeper ensemble and
the collectors' settings must agree with each other and with what the collector generates."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from test_deploy import image_env

from collector.config import Settings, load_settings
from workers.storage.migrations import migration_statements

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    return data


def services(kind: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if re.fullmatch(kind, name)}


def mounted(service: dict[str, Any], target: str) -> Path:
    """The file of this checkout mounted at `target` in the container."""
    [source] = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == target]
    path = ROOT / source
    assert path.is_file(), source
    return path


def xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def collector_settings(service: dict[str, Any]) -> Settings:
    environment = {**image_env(), **{k: str(v) for k, v in service["environment"].items()}}
    return load_settings(environ=environment)


def cluster_config() -> ET.Element:
    [server] = list(services(r"clickhouse-s\dr\d").values())[:1]
    return xml(mounted(server, "/etc/clickhouse-server/config.d/cluster.xml"))


def the_cluster() -> ET.Element:
    remote_servers = cluster_config().find("remote_servers")
    assert remote_servers is not None
    [cluster] = list(remote_servers)
    return cluster


def test_the_cluster_is_two_shards_of_two_replicas_on_the_compose_services() -> None:
    servers = services(r"clickhouse-s\dr\d")
    assert len(servers) == 4
    cluster = the_cluster()
    shards = cluster.findall("shard")
    assert len(shards) == 2
    hosts = []
    for shard in shards:
        assert shard.findtext("internal_replication") == "true"
        replicas = shard.findall("replica")
        assert len(replicas) == 2
        hosts += [(r.findtext("host"), r.findtext("port")) for r in replicas]
    assert sorted(h for h, _ in hosts) == sorted(servers)
    assert {p for _, p in hosts} == {"9000"}
    # Every server reads the same cluster file.
    for server in servers.values():
        assert mounted(server, "/etc/clickhouse-server/config.d/cluster.xml").name == "cluster.xml"
        assert server["image"].startswith("clickhouse/clickhouse-server:")


def test_each_node_has_macros_matching_its_place_in_the_cluster() -> None:
    cluster = the_cluster()
    shard_of = {
        r.findtext("host"): str(n)
        for n, shard in enumerate(cluster.findall("shard"), 1)
        for r in shard.findall("replica")
    }
    replicas = []
    for name, server in services(r"clickhouse-s\dr\d").items():
        config = xml(mounted(server, "/etc/clickhouse-server/config.d/macros.xml"))
        assert config.findtext("macros/shard") == shard_of[name]
        replicas.append(config.findtext("macros/replica"))
        assert config.findtext("interserver_http_host") == name
    # One replica per node in every replicated path, schema_migrations' included (no {shard} there).
    assert len(set(replicas)) == len(replicas)
    # The macros the generated engines name are the ones every node defines.
    used = set()
    for statement in migration_statements(
        "activity", collector_settings(services("collector-1")["collector-1"]).cluster
    ):
        used |= set(re.findall(r"\{(\w+)\}", " ".join(re.findall(r"Replicated\w+\(([^)]*)\)", statement))))
    assert used == {"shard", "replica", "database", "table"}


def test_three_keeper_nodes_form_one_ensemble_that_every_server_uses() -> None:
    keepers = services(r"keeper-\d")
    assert len(keepers) == 3
    ids = {}
    for name, keeper in keepers.items():
        assert keeper["image"].startswith("clickhouse/clickhouse-keeper:")
        config = xml(mounted(keeper, "/etc/clickhouse-keeper/keeper_config.xml"))
        server_id = config.findtext("keeper_server/server_id")
        raft = {
            s.findtext("id"): s.findtext("hostname")
            for s in config.iterfind("keeper_server/raft_configuration/server")
        }
        assert raft == {str(n): f"keeper-{n}" for n in (1, 2, 3)}
        assert raft[server_id] == name
        ids[name] = config.findtext("keeper_server/tcp_port")
    nodes = {(n.findtext("host"), n.findtext("port")) for n in cluster_config().iterfind("zookeeper/node")}
    assert nodes == set(ids.items())
    assert cluster_config().findtext("distributed_ddl/path")


def test_the_collectors_store_into_the_cluster_with_spools_of_their_own() -> None:
    collectors = services(r"collector-\d")
    assert len(collectors) == 2
    cluster = the_cluster()
    clickhouse = services(r"clickhouse-s\dr\d")
    postgres = compose()["services"]["postgres"]
    volumes = []
    for collector in collectors.values():
        settings = collector_settings(collector)
        assert settings.clickhouse_cluster == cluster.tag
        dsn = urlsplit(settings.clickhouse_dsn)
        assert dsn.hostname in clickhouse and dsn.port == 8123
        environment = clickhouse[dsn.hostname]["environment"]
        assert (dsn.username, dsn.password) == (
            environment["CLICKHOUSE_USER"],
            environment["CLICKHOUSE_PASSWORD"],
        )
        pg = urlsplit(settings.postgres_dsn)
        assert pg.hostname == "postgres"
        assert (pg.username, pg.password, pg.path) == (
            postgres["environment"]["POSTGRES_USER"],
            postgres["environment"]["POSTGRES_PASSWORD"],
            "/" + postgres["environment"]["POSTGRES_DB"],
        )
        assert set(collector["depends_on"]) == {*clickhouse, "postgres"}
        assert int(collector["stop_grace_period"].rstrip("s")) > settings.shutdown_grace_s
        [volume] = [v for v in collector["volumes"] if v.endswith(":" + str(settings.data_dir))]
        volumes.append(volume.split(":")[0])
    assert len(set(volumes)) == 2
    assert set(volumes) <= set(compose()["volumes"])


def test_envoy_spreads_calls_over_the_collectors_grpc_ports() -> None:
    envoy = compose()["services"]["envoy"]
    config = yaml.safe_load(mounted(envoy, "/etc/envoy/envoy.yaml").read_text())
    [cluster] = config["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "ROUND_ROBIN" and "grpc_health_check" in cluster["health_checks"][0]
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])
    endpoints = {
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    }
    expected = set()
    for name, collector in services(r"collector-\d").items():
        expected.add((name, int(collector_settings(collector).listen.rpartition(":")[2])))
    assert endpoints == expected
    [listener] = config["static_resources"]["listeners"]
    port = listener["address"]["socket_address"]["port_value"]
    assert envoy["ports"] == [f"127.0.0.1:{port}:{port}"]
