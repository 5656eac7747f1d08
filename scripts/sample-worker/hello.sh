#!/bin/sh
# A sample worker: prints what it was given, as IronWorker's contract hands it over.
echo "Hello from task $TASK_ID"
echo "payload: $(cat "$PAYLOAD_FILE")"
