"""The local stack: a real Apache Kafka broker (KRaft) and Apicurio Registry, installed by Maven and run
as plain Java processes on 127.0.0.1, for users without Docker, tests and benchmarks."""
