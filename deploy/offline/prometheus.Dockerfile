# Prometheus from Debian's `prometheus` package, for hosts that cannot pull prom/prometheus
# (built by deploy/offline/images.sh on the offline base image). Same entry point and paths as
# the public image: docker-compose.yml passes the flags.
ARG BASE_IMAGE=trtserve-base:bookworm-py3.11
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
