//! The test's database on the environment's other servers: a promoted replica the world moves
//! to, SQL as the administrator there, connections of a workload's own.

use super::{mysql_exec, mysql_pool, pg_connect, Source, World};

impl World {
    /// The PostgreSQL administrator on the server at `port`, in database `postgres`.
    pub(super) async fn pg_admin_at(&self, port: &str) -> tokio_postgres::Client {
        pg_connect(
            &self.env,
            port,
            &self.env.get("PG_ADMIN_USER"),
            &self.env.get("PG_ADMIN_PASSWORD"),
            "postgres",
        )
        .await
    }

    /// Moves the world to the same database on the server at `port` (a promoted replica):
    /// its configs, its connection, `verify`.
    pub async fn move_to_port(&mut self, port: &str) {
        let (key, source) = match &self.source {
            Source::Postgres(_) => {
                let client = pg_connect(
                    &self.env,
                    port,
                    &self.env.get("PG_USER"),
                    &self.env.get("PG_PASSWORD"),
                    &self.name,
                )
                .await;
                ("PG_PORT", Source::Postgres(client))
            }
            Source::Mysql(_) => {
                let pool = mysql_pool(
                    &self.env,
                    port,
                    &self.env.get("MYSQL_ADMIN_USER"),
                    &self.env.get("MYSQL_ADMIN_PASSWORD"),
                    Some(&self.name),
                );
                ("MYSQL_PORT", Source::Mysql(pool))
            }
        };
        self.env
            .vars
            .insert(format!("ETCD_SYNC_TEST_{key}"), port.to_owned());
        self.source = source;
    }

    /// Runs SQL as the administrator on the server at `port` (in database `postgres` for
    /// PostgreSQL): the same kind of server as the test's.
    pub async fn admin_sql_on(&self, port: &str, sql: &str) {
        self.admin_query_on(port, sql).await;
    }

    /// The first column of the first row (as text, empty if none) of `sql`, run as the
    /// administrator on the server at `port`.
    pub async fn admin_query_on(&self, port: &str, sql: &str) -> String {
        use mysql_async::prelude::Queryable;
        match &self.source {
            Source::Postgres(_) => {
                let admin = self.pg_admin_at(port).await;
                let messages = admin
                    .simple_query(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                messages
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            Some(row.get(0).unwrap_or_default().to_owned())
                        }
                        _ => None,
                    })
                    .unwrap_or_default()
            }
            Source::Mysql(_) => {
                let admin = self.mysql_admin_pool(port);
                let mut conn = admin.get_conn().await.unwrap();
                let mut last = None;
                // One statement at a time: the text may hold several.
                for statement in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
                    last = conn
                        .query_first::<Option<String>, _>(statement)
                        .await
                        .unwrap_or_else(|e| panic!("{statement}: {e}"));
                }
                drop(conn);
                let _ = admin.disconnect().await;
                last.flatten().unwrap_or_default()
            }
        }
    }

    /// A connection of its own to the test's database (for a workload in a task of its own).
    pub async fn new_source_connection(&self) -> Source {
        match &self.source {
            Source::Postgres(_) => Source::Postgres(
                pg_connect(
                    &self.env,
                    &self.env.get("PG_PORT"),
                    &self.env.get("PG_USER"),
                    &self.env.get("PG_PASSWORD"),
                    &self.name,
                )
                .await,
            ),
            Source::Mysql(pool) => Source::Mysql(pool.clone()),
        }
    }

    /// Creates this test's database on another MariaDB of the test environment.
    pub async fn create_mysql_database_on(&self, port: &str) {
        let admin = self.mysql_admin_pool(port);
        mysql_exec(
            &admin,
            &format!(
                "DROP DATABASE IF EXISTS {0}; CREATE DATABASE {0}",
                self.name
            ),
        )
        .await;
        let _ = admin.disconnect().await;
    }

    /// Creates this test's database on another server of the test environment.
    pub async fn create_database_on(&self, port: &str) {
        let admin = self.pg_admin_at(port).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("CREATE DATABASE {} OWNER sync", self.name),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
    }
}
