package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options configure an S3 (or S3-compatible) target.
type S3Options struct {
	// Endpoint is host[:port] of the S3 API (default s3.amazonaws.com).
	Endpoint string
	Region   string
	// AccessKey and SecretKey; when empty, credentials come from the environment
	// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), ~/.aws/credentials or the instance's
	// IAM role.
	AccessKey, SecretKey string
	// Insecure uses http rather than https (local MinIO and tests).
	Insecure bool
	// PathStyle addresses buckets as endpoint/bucket rather than bucket.endpoint.
	PathStyle bool
}

// s3Target stores the archive in a bucket under a prefix. Each Put is one PutObject, which
// S3 makes visible whole or not at all.
type s3Target struct {
	c      *minio.Client
	bucket string
	prefix string // "" or ending in "/"
}

// NewS3Target returns a Target storing under prefix in bucket.
func NewS3Target(bucket, prefix string, o S3Options) (Target, error) {
	if bucket == "" {
		return nil, errors.New("archive: s3 destination without a bucket")
	}
	if o.Endpoint == "" {
		o.Endpoint = "s3.amazonaws.com"
	}
	creds := credentials.NewStaticV4(o.AccessKey, o.SecretKey, "")
	if o.AccessKey == "" {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.EnvMinio{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	lookup := minio.BucketLookupAuto
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.New(o.Endpoint, &minio.Options{Creds: creds, Secure: !o.Insecure, Region: o.Region, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &s3Target{c: c, bucket: bucket, prefix: prefix}, nil
}

func (t *s3Target) String() string { return "s3://" + t.bucket + "/" + t.prefix }

func (t *s3Target) Put(ctx context.Context, key string, data []byte) error {
	_, err := t.c.PutObject(ctx, t.bucket, t.prefix+key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
	if err != nil {
		return fmt.Errorf("archive: put %s: %w", key, err)
	}
	return nil
}

func (t *s3Target) Get(ctx context.Context, key string) ([]byte, error) {
	obj, err := t.c.GetObject(ctx, t.bucket, t.prefix+key, minio.GetObjectOptions{})
	if err == nil {
		var b []byte
		b, err = io.ReadAll(obj)
		obj.Close()
		if err == nil {
			return b, nil
		}
	}
	if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
		return nil, fmt.Errorf("archive: get %s: %w", key, fs.ErrNotExist)
	}
	return nil, fmt.Errorf("archive: get %s: %w", key, err)
}

func (t *s3Target) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	for obj := range t.c.ListObjects(ctx, t.bucket, minio.ListObjectsOptions{Prefix: t.prefix + prefix}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("archive: list %s: %w", prefix, obj.Err)
		}
		keys = append(keys, strings.TrimPrefix(obj.Key, t.prefix))
	}
	sort.Strings(keys)
	return keys, nil
}

func (t *s3Target) Delete(ctx context.Context, key string) error {
	if err := t.c.RemoveObject(ctx, t.bucket, t.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("archive: delete %s: %w", key, err)
	}
	return nil
}

func (t *s3Target) DeleteAll(ctx context.Context, prefix string) error {
	objs := t.c.ListObjects(ctx, t.bucket, minio.ListObjectsOptions{Prefix: t.prefix + prefix, Recursive: true})
	for e := range t.c.RemoveObjects(ctx, t.bucket, objs, minio.RemoveObjectsOptions{}) {
		if e.Err != nil {
			return fmt.Errorf("archive: delete %s: %w", e.ObjectName, e.Err)
		}
	}
	return ctx.Err()
}

func (t *s3Target) getAtMost(ctx context.Context, key string, limit int64) ([]byte, error) {
	obj, err := t.c.GetObject(ctx, t.bucket, t.prefix+key, minio.GetObjectOptions{})
	if err == nil {
		defer obj.Close()
		var b []byte
		b, err = io.ReadAll(io.LimitReader(obj, limit+1))
		if err == nil {
			if int64(len(b)) > limit {
				return nil, fmt.Errorf("%w: %s is more than %d bytes", ErrTooLarge, key, limit)
			}
			return b, nil
		}
	}
	if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
		return nil, fmt.Errorf("archive: get %s: %w", key, fs.ErrNotExist)
	}
	return nil, fmt.Errorf("archive: get %s: %w", key, err)
}
