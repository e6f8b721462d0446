# Locust master/workers and `python -m loadtest.run` for the `loadtest` profile. The load-test
# code is mounted from the repository, not copied. Pins as in pyproject.toml.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1
RUN python -m pip install "locust==2.47.0" "tritonclient[grpc,http]==2.73.0" "numpy==1.26.4"
WORKDIR /workspace/trtserve
ENTRYPOINT ["locust"]
