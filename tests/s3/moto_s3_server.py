"""A real S3-compatible server for tests and benchmarks: moto's threaded server (a thread per
request) on a loopback port, with signature checking on.

It creates one IAM user with full access and its access key, and the buckets named on the
command line; then turns authentication on, so that every later request must be signed with
that key (a wrong key is refused as S3 refuses it), and prints one line:

  listening on 127.0.0.1:PORT key ACCESS_KEY_ID secret SECRET_ACCESS_KEY

It serves until killed. Usage: moto_s3_server.py [--port N] BUCKET...
"""

import argparse
import json
import logging
import sys
import time

import boto3
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.moto_server.threaded_moto_server import ThreadedMotoServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
    parser.add_argument("buckets", nargs="*")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    def client(service):
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="setup", aws_secret_access_key="setup")

    iam = client("iam")
    iam.create_user(UserName="tenax")
    iam.put_user_policy(UserName="tenax", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="tenax")["AccessKey"]
    s3 = client("s3")
    for bucket in args.buckets:
        s3.create_bucket(Bucket=bucket)
    # From here on every request is authenticated (moto counts requests against this limit).
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0

    print(f"listening on {host}:{port} key {key['AccessKeyId']} secret {key['SecretAccessKey']}",
          flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
