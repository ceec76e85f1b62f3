// Command graph-emulator serves the local Microsoft Graph calling and Entra
// token emulator (internal/emulator) over HTTPS until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/callguard/callguard/internal/emulator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0) // usage was printed
	case err != nil:
		fmt.Fprintln(os.Stderr, "graph-emulator:", err)
		os.Exit(1)
	}
}

// run parses args, serves until ctx is done and shuts down. The ready line
// "listening on https://HOST:PORT" goes to stdout, logs to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("graph-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8443", "`ADDR` to serve HTTPS on (port 0 picks a free port)")
	stateDir := fs.String("state-dir", "", "`DIR` where ca.crt (and ca.key, reused on restart) are kept (required)")
	missedAfter := fs.Duration("missed-after", emulator.DefaultMissedAfter, "end a call nobody acted on after this long")
	promptSpeed := fs.Float64("prompt-speed", 1, "play prompts `N` times faster than their length (tests)")
	var bots []emulator.Bot
	fs.Func("bot", "register a bot: `appId=UUID,tenantId=UUID,secret=S[,cert=PATH][,callback=URL][,legacy=true][,roles=A|B|…]` (repeatable; roles are the application permissions granted, every calling permission when left out, none with roles=)", func(v string) error {
		b, err := parseBot(v)
		if err != nil {
			return err
		}
		bots = append(bots, b)
		return nil
	})
	var hosts []string
	fs.Func("hostname", "extra `NAME` (or IP) for the server certificate, e.g. a Service DNS name (repeatable)", func(v string) error {
		hosts = append(hosts, v)
		return nil
	})
	resolve := map[string]string{}
	fs.Func("resolve", "deliver notifications for `HOST:PORT:ADDR` to the IP address ADDR, as curl's --resolve: a bot's public https callback where no DNS names its host (repeatable)", func(v string) error {
		hostPort, addr, err := parseResolve(v)
		if err != nil {
			return err
		}
		resolve[hostPort] = addr
		return nil
	})
	var callbackCAs []byte
	fs.Func("callback-ca", "trust the PEM CA certificates in `FILE` for https callbacks and prompt fetches, besides the system roots (repeatable)", func(v string) error {
		pem, err := os.ReadFile(v)
		if err != nil {
			return err
		}
		callbackCAs = append(append(callbackCAs, pem...), '\n')
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *stateDir == "" {
		return errors.New("--state-dir is required: the CA clients must trust is written there")
	}
	if !(*promptSpeed > 0) || math.IsInf(*promptSpeed, 0) {
		return fmt.Errorf("--prompt-speed %v: want a positive number", *promptSpeed)
	}

	log := slog.New(slog.NewJSONHandler(stderr, nil))
	srv, err := emulator.New(emulator.Config{
		Listen:      *listen,
		Hosts:       hosts,
		StateDir:    *stateDir,
		Bots:        bots,
		MissedAfter: *missedAfter,
		PromptSpeed: *promptSpeed,
		Logger:      log,

		CallbackResolve: resolve,
		CallbackCAs:     callbackCAs,
	})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return errors.Join(err, srv.Close())
	}
	if _, err := fmt.Fprintf(stdout, "listening on %s\n", srv.URL()); err != nil {
		return errors.Join(fmt.Errorf("writing the ready line: %w", err), srv.Close())
	}
	<-ctx.Done()
	log.Info("shutting down")
	if err := srv.Close(); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// parseBot parses a --bot value. Values cannot contain commas. Errors never
// quote values, which may be secrets.
func parseBot(spec string) (emulator.Bot, error) {
	var b emulator.Bot
	for i, field := range strings.Split(spec, ",") {
		key, value, ok := strings.Cut(field, "=")
		if ok && key == "roles" {
			// Empty: no permission at all.
			b.Roles = []string{}
			for r := range strings.SplitSeq(value, "|") {
				if r = strings.TrimSpace(r); r != "" {
					b.Roles = append(b.Roles, r)
				}
			}
			continue
		}
		if !ok || value == "" {
			return b, fmt.Errorf("--bot: field %d is not key=value", i+1)
		}
		switch key {
		case "appId":
			b.AppID = value
		case "tenantId":
			b.TenantID = value
		case "secret":
			b.Secret = value
		case "callback":
			b.Callback = value
		case "legacy":
			legacy, err := strconv.ParseBool(value)
			if err != nil {
				return b, fmt.Errorf("--bot: legacy must be true or false: %w", err)
			}
			b.Legacy = legacy
		case "cert":
			pem, err := os.ReadFile(value)
			if err != nil {
				return b, fmt.Errorf("--bot: reading the certificate: %w", err)
			}
			b.CertPEM = pem
		default:
			return b, fmt.Errorf("--bot: unknown key %q (want appId, tenantId, secret, cert, callback, legacy, roles)", key)
		}
	}
	if b.AppID == "" || b.TenantID == "" {
		return b, errors.New("--bot: appId and tenantId are required")
	}
	return b, nil
}

// parseResolve parses a --resolve value HOST:PORT:ADDR (ADDR an IP address,
// an IPv6 one in brackets or not) into "HOST:PORT" and ADDR.
func parseResolve(v string) (hostPort, addr string, err error) {
	host, rest, ok := strings.Cut(v, ":")
	port, addr, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || host == "" {
		return "", "", fmt.Errorf("--resolve %q: want HOST:PORT:ADDR", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("--resolve %q: %q is not a port", v, port)
	}
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	if net.ParseIP(addr) == nil {
		return "", "", fmt.Errorf("--resolve %q: %q is not an IP address", v, addr)
	}
	return net.JoinHostPort(host, port), addr, nil
}
