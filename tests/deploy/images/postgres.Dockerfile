# Stand-in for the official postgres:16 image (tests/deploy): Debian's PostgreSQL on the debootstrapped base, with
# the same contract as far as docker/compose.yaml uses it: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB create
# the role and database on first start, data in /var/lib/postgresql/data, pg_isready on the PATH, port 5432.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
