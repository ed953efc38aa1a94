package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// runCerts writes everything the control plane needs to authenticate:
// a cluster CA, the apiserver serving certificate, client certificates and
// kubeconfigs for the admin and each component, and the service-account
// signing key pair. Files that already exist are kept, so the command is
// idempotent for a state directory that outlives a crash.
func runCerts(args []string) int {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fs.String("dir", "pki", "output directory")
	server := fs.String("server", "https://127.0.0.1:16443", "apiserver URL written into the kubeconfigs")
	serviceIP := fs.String("service-ip", "127.96.0.1", "first IP of the service cluster IP range (the kubernetes Service)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := writeCerts(*dir, *server, *serviceIP); err != nil {
		fmt.Fprintf(os.Stderr, "certs: %v\n", err)
		return 1
	}
	return 0
}

type clientIdentity struct {
	file   string   // base name of .crt/.key/.kubeconfig
	cn     string   // user name
	groups []string // organisations become groups
}

var clientIdentities = []clientIdentity{
	{"admin", "kubernetes-admin", []string{"system:masters"}},
	{"kube-controller-manager", "system:kube-controller-manager", nil},
	{"kube-scheduler", "system:kube-scheduler", nil},
	// kwok plays every kubelet (node and pod status, leases, impersonation).
	{"kwok", "kwok-controller", []string{"system:masters"}},
}

func writeCerts(dir, server, serviceIP string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p := func(name string) string { return filepath.Join(dir, name) }

	ca, caKey, err := loadOrCreateCA(p("ca.crt"), p("ca.key"))
	if err != nil {
		return err
	}

	if !exists(p("apiserver.crt")) {
		ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
		if ip := net.ParseIP(serviceIP); ip != nil {
			ips = append(ips, ip)
		}
		names := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"}
		if err := issue(ca, caKey, p("apiserver.crt"), p("apiserver.key"), pkix.Name{CommonName: "kube-apiserver"},
			names, ips, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}); err != nil {
			return err
		}
	}

	caPEM, err := os.ReadFile(p("ca.crt"))
	if err != nil {
		return err
	}
	for _, id := range clientIdentities {
		crt, key := p(id.file+".crt"), p(id.file+".key")
		if !exists(crt) {
			if err := issue(ca, caKey, crt, key, pkix.Name{CommonName: id.cn, Organization: id.groups},
				nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}); err != nil {
				return err
			}
		}
		if err := writeKubeconfig(p(id.file+".kubeconfig"), server, id.cn, caPEM, crt, key); err != nil {
			return err
		}
	}

	// Client certificate the aggregator presents to extension apiservers
	// (requestheader authentication); the same CA verifies it.
	if !exists(p("front-proxy-client.crt")) {
		if err := issue(ca, caKey, p("front-proxy-client.crt"), p("front-proxy-client.key"),
			pkix.Name{CommonName: "front-proxy-client"}, nil, nil,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}); err != nil {
			return err
		}
	}

	if !exists(p("sa.key")) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return err
		}
		if err := writePEM(p("sa.pub"), "PUBLIC KEY", der, 0o644); err != nil {
			return err
		}
		if err := writePrivateKey(p("sa.key"), k); err != nil {
			return err
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func loadOrCreateCA(crtPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	if exists(crtPath) && exists(keyPath) {
		return loadPair(crtPath, keyPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "llmops-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(crtPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	if err := writePrivateKey(keyPath, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadPair(crtPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	crtPEM, err := os.ReadFile(crtPath)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(crtPEM)
	if b == nil {
		return nil, nil, fmt.Errorf("%s: no PEM data", crtPath)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("%s: no PEM data", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("CA key is not a signer")
	}
	return cert, signer, nil
}

func issue(ca *x509.Certificate, caKey crypto.Signer, crtPath, keyPath string, subject pkix.Name,
	dnsNames []string, ips []net.IP, usage []x509.ExtKeyUsage) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usage,
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writePrivateKey(keyPath, key); err != nil {
		return err
	}
	return writePEM(crtPath, "CERTIFICATE", der, 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n
}

func writePrivateKey(path string, key any) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeKubeconfig(path, server, user string, caPEM []byte, crtPath, keyPath string) error {
	crt, err := os.ReadFile(crtPath)
	if err != nil {
		return err
	}
	key, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	const cluster = "llmops-test"
	ctxName := strings.TrimPrefix(user, "system:") + "@" + cluster
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[cluster] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts[ctxName] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = ctxName
	return clientcmd.WriteToFile(*cfg, path)
}
