# One image for every role: the Procfile's release, web, worker and flower (docker-compose.yml
# runs each with its own command). Build: docker build -t masterplan .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, read from pyproject.toml, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['ops']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project itself, installed in place: alembic.ini and migrations/ stay beside the code, and
# every role imports the same single copy.
COPY . .
RUN pip install --no-deps --config-settings editable_mode=compat -e . \
 && useradd --create-home --uid 10001 masterplan

USER masterplan
EXPOSE 8000 5555
# The Procfile's `web`; compose and platforms give each role its own command.
CMD ["sh", "-c", "exec uvicorn api.main:app --host 0.0.0.0 --port ${PORT:-8000} --timeout-graceful-shutdown 10"]
