pytest_plugins = ["tests.harness.fixtures", "aiobus.testing"]
