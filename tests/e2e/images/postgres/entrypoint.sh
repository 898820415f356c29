#!/bin/sh
# The part of the official image's entrypoint that the rendered StatefulSet uses: credentials from
# POSTGRES_USER_FILE / POSTGRES_PASSWORD_FILE / POSTGRES_DB_FILE, a cluster made in an empty PGDATA
# (password authentication over TCP), then the server in the foreground.
set -eu
for var in POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB; do
    file=$(eval "printf '%s' \"\${${var}_FILE:-}\"")
    if [ -n "$file" ]; then
        export "$var=$(cat "$file")"
    fi
done
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile=$(mktemp)
    printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE is required}" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 --pgdata="$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" \
        --wait start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --host=/var/run/postgresql --username="$POSTGRES_USER" --dbname=postgres \
            --command="CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    fi
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
fi
exec "$@"
