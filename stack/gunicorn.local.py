# gunicorn settings for the local cluster (`make up`) and the tests' replicas.
# Two cores are shared by three web servers, two consumers, Kafka and PostgreSQL here, so each
# server gets two workers; threads let a master worker overlap requests that wait on Kafka.
workers = 2
threads = 4
# One line per request, with the time it took in microseconds (%(D)s).
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus'
graceful_timeout = 10
