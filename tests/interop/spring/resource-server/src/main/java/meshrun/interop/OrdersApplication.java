package meshrun.interop;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.security.access.prepost.PreAuthorize;
import org.springframework.security.config.annotation.method.configuration.EnableMethodSecurity;
import org.springframework.security.core.annotation.AuthenticationPrincipal;
import org.springframework.security.oauth2.jwt.Jwt;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RestController;

import java.util.Map;

/**
 * A Spring Boot resource server as a Spring team writes one: nothing but Boot's own JWT support, configured by
 * properties (issuer-uri, audiences) given on the command line. No decoder bean: the test is about the defaults.
 */
@SpringBootApplication
@EnableMethodSecurity
public class OrdersApplication {

    public static void main(String[] args) {
        SpringApplication.run(OrdersApplication.class, args);
    }

    @RestController
    static class OrdersController {

        @PostMapping("/orders")
        @PreAuthorize("hasAuthority('SCOPE_orders.write')")
        Map<String, Object> placeOrder(@AuthenticationPrincipal Jwt jwt) {
            return Map.of("placed_by", jwt.getSubject(), "scope", jwt.getClaims().get("scope"));
        }
    }
}
