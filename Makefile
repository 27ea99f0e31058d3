# The two commands: `make up` runs the product locally, `make test` runs the whole suite.
# Both install what is missing first (stack/install.sh) and start the services they need.
.PHONY: up test down status

up:
	@bash stack/up.sh

test:
	@bash stack/test.sh $(ARGS)

down:
	@bash stack/down.sh

status:
	@bash stack/services.sh status
