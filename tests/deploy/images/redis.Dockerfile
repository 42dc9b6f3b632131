# Stand-in for the official redis:7 image (tests/deploy): Debian's Redis on the debootstrapped base, run as the
# redis user in /data (where --appendonly writes), protected mode off like the official image (compose's other
# containers connect without a password on the project's private network), redis-cli on the PATH.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
