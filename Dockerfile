# A slim image for sdplite device plugins: Python, h2, protobuf and sdplite.
# No compiler and no grpcio: everything installed is pure Python or a wheel.
# By default it runs `sdplite serve` with /etc/sdplite/serve.json; to run your
# own plugin, build FROM this image, COPY your module and set CMD.
FROM python:3.12-slim AS build
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml README.md LICENSE ./
COPY sdplite ./sdplite
RUN pip wheel --no-deps --no-cache-dir -w /wheels .

FROM python:3.12-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SDPLITE_STATUS_FILE=/run/sdplite/status.json
ENTRYPOINT ["sdplite"]
CMD ["serve", "--config", "/etc/sdplite/serve.json"]
