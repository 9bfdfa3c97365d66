pytest_plugins = ["tests.s3_fixtures", "tests.realclient_fixtures"]
