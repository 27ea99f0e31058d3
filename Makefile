# The two commands: `make up` runs the product locally, `make test` runs the whole suite.
# Both install what is missing first (stack/install.sh) and start the services they need.
# `make test-fast` runs the tests that need no service, with none started (stack/test-fast.sh).
# `make chaos MINUTES=10 SEED=7` runs the randomized fault schedule and its checker (stack/chaos.sh);
# TOPOLOGY=scale runs it on three brokers, two masters behind HAProxy and five replicas.
.PHONY: up test test-fast test-scale down status chaos

up:
	@bash stack/up.sh

test:
	@bash stack/test.sh $(ARGS)

# The deployment topology alone (three brokers, two masters behind HAProxy, five replicas;
# root): also part of `make test`.
test-scale:
	@bash stack/test.sh -m scale $(ARGS)

test-fast:
	@bash stack/test-fast.sh $(ARGS)

down:
	@bash stack/down.sh

status:
	@bash stack/services.sh status

chaos:
	@MINUTES=$(MINUTES) SEED=$(SEED) TOPOLOGY=$(TOPOLOGY) bash stack/chaos.sh
