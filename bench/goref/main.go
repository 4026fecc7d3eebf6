// goref: a hand-written Stripe webhook → Kafka / RabbitMQ server, the reference peer of
// bench/run.sh. It is what a careful engineer would write with the usual libraries, with the
// same guarantees as hookbridge, so the comparison is fair:
//
//   - net/http; the body read whole (limit 1 MiB), verified and parsed by stripe-go's
//     webhook.ConstructEventWithOptions (signature and 300 s tolerance; the API version of the
//     fixtures is not stripe-go's, so a mismatch is ignored);
//   - Kafka (-mode kafka): franz-go, acks=all, idempotent, linger 1 ms, no compression (as the
//     bridge's default), key data.object.id (else the event id), the bridge's record headers;
//     the answer is 200 only after the produce is acknowledged;
//   - RabbitMQ (-mode rabbitmq): amqp091-go, persistent, mandatory, publisher confirms, one
//     publish at a time per channel from a pool (as the bridge's sink), routing key = event type;
//     200 only when acked and not returned;
//   - every wait bounded by -ack-timeout; anything else is a 5xx (or 400 for a bad signature).
//
// Not part of CI: bench/run.sh builds it with `go build` and runs it like the bridge.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"
	"github.com/twmb/franz-go/pkg/kgo"
)

const maxBody = 1 << 20

type publisher interface {
	publish(ctx context.Context, ev *stripe.Event, key string, body []byte, signature string) error
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18090", "address to serve webhooks on")
	path := flag.String("path", "/webhooks/stripe", "webhook path")
	secret := flag.String("secret", os.Getenv("STRIPE_WEBHOOK_SECRET"), "signing secret (whsec_…)")
	mode := flag.String("mode", "kafka", "kafka or rabbitmq")
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	topic := flag.String("topic", "hookbridge.bench", "Kafka topic")
	linger := flag.Duration("linger", time.Millisecond, "Kafka producer linger")
	amqpURL := flag.String("amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f", "RabbitMQ URL")
	exchange := flag.String("exchange", "hookbridge.bench", "RabbitMQ exchange (topic, durable)")
	queue := flag.String("queue", "hookbridge.bench", "durable queue bound to the exchange with #")
	channels := flag.Int("channels", 256, "RabbitMQ channels: publishes in flight at most")
	ackTimeout := flag.Duration("ack-timeout", 5*time.Second, "longest wait for a broker confirm")
	flag.Parse()
	if *secret == "" {
		log.Fatal("goref: -secret (or STRIPE_WEBHOOK_SECRET) is required")
	}

	var pub publisher
	var err error
	switch *mode {
	case "kafka":
		pub, err = newKafka(*brokers, *topic, *linger, *ackTimeout)
	case "rabbitmq":
		pub, err = newRabbit(*amqpURL, *exchange, *queue, *channels)
	default:
		err = fmt.Errorf("unknown -mode %q (kafka or rabbitmq)", *mode)
	}
	if err != nil {
		log.Fatalf("goref: %v", err)
	}

	// Requests answered on the webhook path, for bench/run.sh's CPU per event.
	var answered atomic.Uint64
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/requests", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, strconv.FormatUint(answered.Load(), 10)+"\n")
	})
	mux.HandleFunc(*path, func(w http.ResponseWriter, r *http.Request) {
		defer answered.Add(1)
		if r.Method != http.MethodPost {
			answer(w, http.StatusMethodNotAllowed, "method_not_allowed")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			answer(w, http.StatusRequestEntityTooLarge, "bad_body")
			return
		}
		signature := r.Header.Get("Stripe-Signature")
		ev, key, err := parse(body, signature, *secret)
		if errors.Is(err, webhook.ErrInvalidHeader) || errors.Is(err, webhook.ErrNoValidSignature) ||
			errors.Is(err, webhook.ErrNotSigned) || errors.Is(err, webhook.ErrTooOld) {
			answer(w, http.StatusBadRequest, "signature_mismatch")
			return
		} else if err != nil {
			answer(w, http.StatusBadRequest, "invalid_event")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), *ackTimeout)
		defer cancel()
		if err := pub.publish(ctx, ev, key, body, signature); err != nil {
			answer(w, http.StatusServiceUnavailable, "sink_unavailable")
			return
		}
		answer(w, http.StatusOK, "")
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("goref: %v", err)
	}
}

// parse verifies the signature and reads the event: a snapshot event with ConstructEvent, a thin
// (v2) event, whose `created` is a timestamp string, as stripe-go's ThinEvent. Returns the event
// (for the headers) and the message key: data.object.id (related_object.id), else the event id.
func parse(body []byte, signature, secret string) (*stripe.Event, string, error) {
	ev, err := webhook.ConstructEventWithOptions(body, signature, secret,
		webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
	if err == nil {
		key := ev.ID
		if ev.Data != nil {
			if id, ok := ev.Data.Object["id"].(string); ok && id != "" {
				key = id
			}
		}
		return &ev, key, nil
	}
	if errors.Is(err, webhook.ErrInvalidHeader) || errors.Is(err, webhook.ErrNoValidSignature) ||
		errors.Is(err, webhook.ErrNotSigned) || errors.Is(err, webhook.ErrTooOld) {
		return nil, "", err
	}
	// The signature was valid (ConstructEvent checks it before parsing): try a thin event.
	var thin stripe.ThinEvent
	if json.Unmarshal(body, &thin) != nil || thin.ID == "" {
		return nil, "", err
	}
	out := &stripe.Event{ID: thin.ID, Type: stripe.EventType(thin.Type), Livemode: thin.Livemode}
	if thin.Context != nil {
		out.Account = *thin.Context
	}
	key := thin.ID
	if thin.RelatedObject != nil && thin.RelatedObject.ID != "" {
		key = thin.RelatedObject.ID
	}
	return out, key, nil
}

func answer(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if code == "" {
		_, _ = io.WriteString(w, `{"received":true}`)
	} else {
		_, _ = io.WriteString(w, `{"error":"`+code+`"}`)
	}
}

// headers are the bridge's record/message headers (SPEC.md), in its order.
func headers(ev *stripe.Event, signature string) [][2]string {
	h := [][2]string{{"stripe-event-id", ev.ID}, {"stripe-event-type", string(ev.Type)}}
	if ev.APIVersion != "" {
		h = append(h, [2]string{"stripe-api-version", ev.APIVersion})
	}
	h = append(h, [2]string{"stripe-livemode", strconv.FormatBool(ev.Livemode)})
	if ev.Account != "" {
		h = append(h, [2]string{"stripe-account", ev.Account})
	}
	h = append(h, [2]string{"stripe-signature", signature}, [2]string{"content-type", "application/json"})
	return h
}

type kafkaPub struct {
	cl    *kgo.Client
	topic string
}

func newKafka(brokers, topic string, linger, ackTimeout time.Duration) (*kafkaPub, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers),
		kgo.ClientID("goref"),
		kgo.RequiredAcks(kgo.AllISRAcks()), // with idempotence, franz-go's default
		kgo.ProducerLinger(linger),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.RecordDeliveryTimeout(ackTimeout),
	)
	if err != nil {
		return nil, err
	}
	return &kafkaPub{cl: cl, topic: topic}, nil
}

func (k *kafkaPub) publish(ctx context.Context, ev *stripe.Event, key string, body []byte, signature string) error {
	rec := &kgo.Record{Topic: k.topic, Key: []byte(key), Value: body}
	for _, h := range headers(ev, signature) {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h[0], Value: []byte(h[1])})
	}
	return k.cl.ProduceSync(ctx, rec).FirstErr()
}

// rabbitPub keeps a pool of channels in confirm mode; each carries one publish at a time, so a
// basic.return is known to belong to the publish it precedes the confirm of.
type rabbitPub struct {
	conn     *amqp.Connection
	exchange string
	pool     chan *rabbitChan
}

type rabbitChan struct {
	ch      *amqp.Channel
	returns chan amqp.Return
}

func newRabbit(url, exchange, queue string, channels int) (*rabbitPub, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, err
	}
	setup, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := setup.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		return nil, err
	}
	if _, err := setup.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return nil, err
	}
	if err := setup.QueueBind(queue, "#", exchange, false, nil); err != nil {
		return nil, err
	}
	_ = setup.Close()
	p := &rabbitPub{conn: conn, exchange: exchange, pool: make(chan *rabbitChan, channels)}
	for i := 0; i < channels; i++ {
		ch, err := conn.Channel()
		if err != nil {
			return nil, err
		}
		if err := ch.Confirm(false); err != nil {
			return nil, err
		}
		p.pool <- &rabbitChan{ch: ch, returns: ch.NotifyReturn(make(chan amqp.Return, 1))}
	}
	return p, nil
}

var errReturned = errors.New("unroutable: returned by the broker")

func (p *rabbitPub) publish(ctx context.Context, ev *stripe.Event, _ string, body []byte, signature string) error {
	var c *rabbitChan
	select {
	case c = <-p.pool:
	case <-ctx.Done():
		return ctx.Err()
	}
	table := amqp.Table{}
	for _, h := range headers(ev, signature) {
		table[h[0]] = h[1]
	}
	msg := amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		ContentType:  "application/json",
		MessageId:    ev.ID,
		Type:         string(ev.Type),
		AppId:        "goref",
		Timestamp:    time.Unix(ev.Created, 0),
		Headers:      table,
		Body:         body,
	}
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, p.exchange, string(ev.Type), true, false, msg)
	if err != nil {
		return err // the channel is not returned to the pool: it may be closed
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return err // confirm still outstanding: never reuse this channel
	}
	// A return precedes its confirm on the same channel.
	select {
	case <-c.returns:
		p.pool <- c
		return errReturned
	default:
	}
	p.pool <- c
	if !acked {
		return errors.New("nacked by the broker")
	}
	return nil
}
