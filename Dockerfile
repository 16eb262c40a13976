# adpulse: a static binary on a distroless base, running as a non-root user.
#   docker build -t adpulse .
#   docker run -p 8080:8080 -v adpulse-data:/data adpulse
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/adpulse ./cmd/adpulse

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/adpulse /usr/local/bin/adpulse
USER nonroot:nonroot
VOLUME /data
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/adpulse"]
CMD ["serve", "--data-dir", "/data", "--listen", ":8080", "--ops-listen", ":9464"]
