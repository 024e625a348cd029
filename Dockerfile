# A slim image for sdplite device plugins: Python, h2, protobuf and sdplite.
# No compiler, no grpcio and no pip: the build stage installs sdplite and its
# dependencies into /install, the final stage copies that tree over the base
# image's /usr/local and drops the base image's pip (about 16 MiB, unused at run time).
# By default it runs `sdplite serve` with /etc/sdplite/serve.json; to run your
# own plugin, build FROM this image, COPY your module and set CMD.
# Build, push and deploy: README.md, "Deploy".
FROM python:3.12-slim AS build
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml README.md LICENSE ./
COPY sdplite ./sdplite
RUN pip wheel --no-deps --no-cache-dir -w /wheels .
RUN pip install --no-cache-dir --no-compile --prefix /install /wheels/*.whl && rm -rf /wheels

FROM python:3.12-slim
RUN rm -rf /usr/local/lib/python3*/site-packages/pip /usr/local/lib/python3*/site-packages/pip-* /usr/local/bin/pip*
COPY --from=build /install /usr/local
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SDPLITE_STATUS_FILE=/run/sdplite/status.json
ENTRYPOINT ["sdplite"]
CMD ["serve", "--config", "/etc/sdplite/serve.json"]
