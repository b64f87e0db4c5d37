"""The baseline: the tutorial design imagesvc grew from, as faithfully as we can write it.

Flask + Flask-SQLAlchemy; `POST /upload` hands the file to boto3's `upload_fileobj` and saves
the object's URL in a table; `GET /image/<id>` looks the row up by primary key and
redirects to that URL. Served by gunicorn (sync workers, as the tutorials do). Only the
benchmark runs it, in its own virtualenv (bench/run.py).

Environment: TUTORIAL_DATABASE_URL (mysql+pymysql://...), TUTORIAL_S3_ENDPOINT,
TUTORIAL_S3_BUCKET, TUTORIAL_S3_KEY, TUTORIAL_S3_SECRET.
"""

from __future__ import annotations

import os

import boto3
from botocore.config import Config
from flask import Flask, jsonify, redirect, request
from flask_sqlalchemy import SQLAlchemy
from werkzeug.utils import secure_filename

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["TUTORIAL_DATABASE_URL"]
db = SQLAlchemy(app)
bucket = os.environ["TUTORIAL_S3_BUCKET"]
endpoint = os.environ["TUTORIAL_S3_ENDPOINT"]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=os.environ["TUTORIAL_S3_KEY"],
    aws_secret_access_key=os.environ["TUTORIAL_S3_SECRET"],
    region_name="us-east-1",
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
)


class Photo(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)
    url = db.Column(db.String(512), nullable=False)


with app.app_context():
    db.create_all()


@app.post("/upload")
def upload():  # type: ignore[no-untyped-def]
    file = request.files["file"]
    key = secure_filename(file.filename or "upload")
    s3.upload_fileobj(file, bucket, key, ExtraArgs={"ContentType": file.mimetype})
    photo = Photo(url=f"{endpoint}/{bucket}/{key}")
    db.session.add(photo)
    db.session.commit()
    return jsonify(id=photo.id, url=photo.url), 201


@app.get("/image/<int:photo_id>")
def image(photo_id: int):  # type: ignore[no-untyped-def]
    photo = db.get_or_404(Photo, photo_id)
    return redirect(photo.url)
