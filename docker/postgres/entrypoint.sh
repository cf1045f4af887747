#!/usr/bin/env bash
# First start: initdb, then a database and a user (POSTGRES_DB, POSTGRES_USER, password from
# POSTGRES_PASSWORD_FILE), password authentication (scram-sha-256) for every network client.
# Every start: the server in the foreground, listening on all interfaces of the container.
set -euo pipefail
: "${POSTGRES_DB:=mlflow}" "${POSTGRES_USER:=mlflow}" "${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE is not set}"
for _ in $(seq 1 60); do [ -s "$POSTGRES_PASSWORD_FILE" ] && break; sleep 1; done
[ -s "$POSTGRES_PASSWORD_FILE" ] || { echo "postgres: no password in $POSTGRES_PASSWORD_FILE" >&2; exit 1; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    initdb --pgdata="$PGDATA" --username=postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 > /dev/null
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl --pgdata="$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
    password="$(cat "$POSTGRES_PASSWORD_FILE")"
    psql -v ON_ERROR_STOP=1 --username=postgres --dbname=postgres -q \
        -v user="$POSTGRES_USER" -v db="$POSTGRES_DB" -v password="$password" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
    pg_ctl --pgdata="$PGDATA" -m fast -w stop > /dev/null
    echo "postgres: made database $POSTGRES_DB for user $POSTGRES_USER" >&2
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
