// Java's built-in HTTP client (java.net.http), which negotiates HTTP/2 by ALPN
// as the Java SDK's OkHttp does, against a TLS gateway. Run as a single-file
// program: java Http2Client.java BASE_URL CA_PEM TOKEN OTHER_TOKEN
// Exits 0 when every check holds; prints the first failure and exits 1.

import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Http2Client {
    static HttpClient client;
    static String base;

    static void check(boolean ok, String what) {
        if (!ok) {
            System.out.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static HttpResponse<String> send(String method, String path, String token, byte[] body) throws Exception {
        HttpRequest.BodyPublisher publisher = body == null
                ? HttpRequest.BodyPublishers.noBody()
                : HttpRequest.BodyPublishers.ofByteArray(body);
        HttpRequest request = HttpRequest.newBuilder(URI.create(base + path))
                .header("Authorization", "Bearer " + token)
                .header("Content-Type", "application/json")
                .method(method, publisher)
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        check(response.version() == HttpClient.Version.HTTP_2,
                method + " " + path + " used " + response.version());
        return response;
    }

    public static void main(String[] args) throws Exception {
        base = args[0];
        String token = args[2];
        String other = args[3];
        CertificateFactory factory = CertificateFactory.getInstance("X.509");
        Certificate ca;
        try (InputStream in = Files.newInputStream(Path.of(args[1]))) {
            ca = factory.generateCertificate(in);
        }
        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        trust.setCertificateEntry("ca", ca);
        TrustManagerFactory managers = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        managers.init(trust);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, managers.getTrustManagers(), null);
        client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_2).sslContext(tls).build();

        String tasks = "/contents/generations/tasks";
        String create = "{\"model\":\"model-a\",\"content\":[{\"type\":\"text\",\"text\":\"a kite\"}]}";
        HttpResponse<String> created = send("POST", tasks, token, create.getBytes());
        check(created.statusCode() == 200, "create: " + created.statusCode() + " " + created.body());
        Matcher id = Pattern.compile("\"id\"\\s*:\\s*\"([^\"]+)\"").matcher(created.body());
        check(id.find(), "create answered no id: " + created.body());
        String task = tasks + "/" + id.group(1);

        HttpResponse<String> got = send("GET", task, token, null);
        check(got.statusCode() == 200 && got.body().contains(id.group(1)), "get: " + got.body());
        HttpResponse<String> listed = send("GET", tasks + "?page_num=1&page_size=10", token, null);
        check(listed.statusCode() == 200 && listed.body().contains(id.group(1)), "list: " + listed.body());
        HttpResponse<String> denied = send("GET", task, other, null);
        check(denied.statusCode() == 403 && denied.body().contains("AccessDenied"), "other tenant: " + denied.body());
        HttpResponse<String> deleted = send("DELETE", task, token, null);
        check(deleted.statusCode() == 200, "delete: " + deleted.statusCode() + " " + deleted.body());

        // Early refusals while a 1 MiB body is still being sent: each arrives as its answer.
        byte[] large = new byte[1024 * 1024];
        for (int round = 0; round < 10; round++) {
            HttpResponse<String> refused = send("POST", tasks, "not-a-token", large);
            check(refused.statusCode() == 401 && refused.body().contains("AuthenticationError"),
                    "early 401, round " + round + ": " + refused.statusCode() + " " + refused.body());
        }
        System.out.println("ok");
    }
}
