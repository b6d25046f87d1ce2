"""The local servers the fleet tests, `make fleet` and the bench start: a real PostgreSQL from
initdb and a real 6-node Redis Cluster on loopback, including a master's failover."""

from __future__ import annotations

import psycopg
import pytest
from redis.cluster import ClusterNode, RedisCluster

from kernelsight.pg_server import TemporaryPostgres
from kernelsight.redis_cluster import LocalRedisCluster

from conftest import need_root


def test_temporary_postgres_password_auth_and_reset(pg_server: TemporaryPostgres,
                                                    pg_url: str) -> None:
    with psycopg.connect(pg_server.dsn) as con:
        assert con.execute("SELECT current_user, current_database()").fetchone() == (
            "ks", "kernelsight")
        con.execute("CREATE TABLE t (x int)")
    pg_server.reset()
    with psycopg.connect(pg_server.dsn) as con:
        assert con.execute("SELECT to_regclass('t')").fetchone() == (None,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn.replace(pg_server.password, "wrong"))
    assert pg_url.startswith("postgresql+psycopg://ks:")


def test_temporary_postgres_is_removed() -> None:
    need_root()
    with TemporaryPostgres() as pg:
        d = pg.dir
        assert (d / "data" / "postmaster.pid").exists()
    assert not d.exists()


def test_cluster_master_kill_promotes_its_replica() -> None:
    need_root()
    with LocalRedisCluster() as c:
        assert sorted(c.roles().values()) == ["master"] * 3 + ["slave"] * 3
        rc = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in c.startup_nodes],
                          password=c.password)
        rc.set("{h1}:k", "v")
        victim = c.master_for("{h1}:k")
        c.kill(victim)
        c.wait_failover(victim)
        assert c.master_for("{h1}:k") is not victim
        assert sorted(c.roles().values()).count("master") == 3
        rc.close()
